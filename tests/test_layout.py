"""The package dependency rule (README, Layout): who may import whom, and only model/ imports torch.

Read from the source with ``ast`` (every import, also those inside functions), then checked by
importing each command's module in a fresh interpreter, which catches what a parse cannot.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# package -> the fedurl packages it may import (besides itself)
ALLOWED = {
    "formats": set(),
    "privacy": set(),
    "runtime": {"formats"},
    "client": {"formats", "privacy"},
    "server": {"formats", "runtime", "privacy"},
    "model": {"formats", "runtime"},
    "study": {"formats", "runtime", "client", "server", "privacy"},
    "deploy": {"formats", "server"},
}
TORCH_PACKAGES = {"model"}


def imported_roots(path: Path) -> set[str]:
    """Top-level names of every module a source file imports (relative imports excluded)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def violations(package: str) -> list[str]:
    """'file imports X' for each import that the rule forbids in package."""
    forbidden = (set(ALLOWED) - ALLOWED[package] - {package})
    if package not in TORCH_PACKAGES:
        forbidden |= {"torch", "onnx", "onnxscript"}
    found = []
    for path in sorted((REPO / package).rglob("*.py")):
        for name in sorted(imported_roots(path) & forbidden):
            found.append(f"{path.relative_to(REPO)} imports {name}")
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_the_rule_allows(package):
    assert (REPO / package / "__init__.py").is_file()
    assert violations(package) == []


def test_the_rule_catches_a_forbidden_import(tmp_path, monkeypatch):
    """The checker itself can fail: a server module importing the simulation is reported."""
    package = tmp_path / "server"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "bad.py").write_text("def f():\n    from study.simulate import run\n    import torch\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert violations("server") == ["server/bad.py imports study", "server/bad.py imports torch"]


def test_every_python_package_is_under_the_rule():
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")}
    assert packages == set(ALLOWED)


@pytest.mark.parametrize("module", ["server.app", "server.cli", "deploy.front", "client.protocol",
                                    "runtime.complete", "runtime.trainer", "study.evaluate", "study.simulate",
                                    "formats.bundle", "privacy.secagg", "privacy.dp"])
def test_module_does_not_import_torch(module):
    code = f"import sys, {module}; sys.exit(3 if 'torch' in sys.modules else 0)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, f"{module} pulls in torch: {result.stderr[-500:]}"


def test_test_files_have_unique_basenames():
    """Tests live in folders without __init__.py, so pytest imports each by its bare name: two
    files called test_x.py in different folders stop the whole run at collection."""
    names = [p.name for p in (REPO / "tests").rglob("test_*.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
