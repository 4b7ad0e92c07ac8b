"""Versions that must move together: onnxruntime (Python) and onnxruntime-web run the same graphs."""

import json
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_onnxruntime_matches_onnxruntime_web():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    python_pin = next(d for d in project["dependencies"] if d.startswith("onnxruntime"))
    package = json.loads((REPO / "web_client" / "package.json").read_text())
    web_pin = package["dependencies"]["onnxruntime-web"]
    assert python_pin == f"onnxruntime=={web_pin}"


def test_constraints_lock_the_pinned_versions():
    lines = (REPO / "constraints.txt").read_text().splitlines()
    locked = dict(line.split("==", 1) for line in lines if re.match(r"^[A-Za-z0-9_.-]+==", line))
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = [d for deps in [project["dependencies"], *project["optional-dependencies"].values()] for d in deps
            if "==" in d]
    for pin in pins:
        name, version = pin.split("==")
        assert locked.get(name) == version, f"constraints.txt disagrees with pyproject.toml on {name}"
