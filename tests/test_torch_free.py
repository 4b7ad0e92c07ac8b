"""The server and the completer run without torch: only export needs it."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["server.app", "server.cli", "server.client", "model.complete",
                                    "model.evaluate", "model.trainer", "model.bundle"])
def test_module_does_not_import_torch(module):
    code = f"import sys, {module}; sys.exit(3 if 'torch' in sys.modules else 0)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, f"{module} pulls in torch (exit {result.returncode}): {result.stderr[-500:]}"
