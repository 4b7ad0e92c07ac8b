"""The documentation names every setting and every error code the server can answer with."""

from __future__ import annotations

import re
from pathlib import Path

from server.config import SETTINGS

REPO = Path(__file__).resolve().parents[2]


def test_every_setting_is_documented():
    """server/README.md has a row for each key of server/config.py."""
    readme = (REPO / "server" / "README.md").read_text()
    assert [key for key in SETTINGS if f"`{key}`" not in readme] == []


def test_every_error_code_is_documented():
    """docs/PROTOCOL.md lists each code raised in server/ (and werkzeug's mapped ones)."""
    source = "".join(p.read_text() for p in (REPO / "server").glob("*.py"))
    codes = (set(re.findall(r'ApiError\(\s*"([a-z_]+)"', source))
             | set(re.findall(r'\d{3}: "([a-z_]+)"', source))
             | set(re.findall(r'^    code = "([a-z_]+)"', source, re.MULTILINE)))
    protocol = (REPO / "docs" / "PROTOCOL.md").read_text()
    assert len(codes) > 25
    assert sorted(code for code in codes if f"`{code}`" not in protocol) == []
