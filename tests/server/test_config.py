"""Settings: environment parsing, strictness, start-up refusals; the rate limiter."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from client.protocol import FederatedClient
from formats.bundle import file_entries
from server.app import create_app
from server.config import from_environ
from server.ratelimit import RateLimiter
from tests.server.conftest import small_delta, write_tiny_bundle


def test_environment_values_are_parsed_by_type():
    """FEDURL_* values take their key's type; other variables are ignored."""
    values = from_environ({"FEDURL_MIN_CLIENTS": "7", "FEDURL_SERVER_LR": "0.5", "FEDURL_ADMIN_TOKEN": "123",
                           "HOME": "/root"})
    assert values == {"MIN_CLIENTS": 7, "SERVER_LR": 0.5, "ADMIN_TOKEN": "123"}


@pytest.mark.parametrize("environ, message", [
    ({"FEDURL_MIN_CLIENT": "7"}, "unknown setting FEDURL_MIN_CLIENT"),
    ({"FEDURL_MIN_CLIENTS": "seven"}, "not a valid int")])
def test_environment_mistakes_are_errors(environ, message):
    """A misspelt key or a value of the wrong type stops the server instead of being ignored."""
    with pytest.raises(ValueError, match=message):
        from_environ(environ)


def test_environment_overrides_defaults(config, monkeypatch):
    """create_app reads FEDURL_* variables (the dict passed in still wins)."""
    monkeypatch.setenv("FEDURL_MAX_STALENESS", "4")
    monkeypatch.setenv("FEDURL_MIN_CLIENTS", "9")
    app = create_app(config)
    assert app.config["MAX_STALENESS"] == 4 and app.config["MIN_CLIENTS"] == 3


@pytest.mark.parametrize("override, message", [
    ({"MIN_CLIENT": 3}, "unknown settings"),
    ({"MIN_CLIENTS": "3"}, "MIN_CLIENTS must be a int"),
    ({"MIN_CLIENTS": 0}, "at least 1"),
    ({"SERVER_OPTIMIZER": "fedsgd"}, "unknown server optimizer"),
])
def test_bad_settings_stop_start_up(config, override, message):
    """Typos and impossible values fail at start, not at the end of the first round."""
    with pytest.raises(ValueError, match=message):
        create_app({**config, **override})


def test_demo_setting_one_client_per_round(config, monkeypatch):
    """make demo sets only FEDURL_MIN_CLIENTS=1: each upload publishes a version at once."""
    monkeypatch.setenv("FEDURL_MIN_CLIENTS", "1")
    settings = {k: v for k, v in config.items() if k not in ("MIN_CLIENTS", "MIN_CLIENTS_FLOOR")}
    client = create_app(settings).test_client()
    fed = FederatedClient(client)
    assert fed.upload(small_delta(), fed.ticket(), 3, 5.0, 4.0)["version"] == 2


def test_no_model_anywhere_is_a_clear_error(config):
    """An empty data dir and no bundle: say how to give the server a model."""
    with pytest.raises(RuntimeError, match="--bundle DIR"):
        create_app({**config, "BUNDLE_DIR": None})


def test_a_data_dir_keeps_its_model(config, tmp_path):
    """A data dir started from one model refuses a bundle with other graphs; the same one resumes."""
    create_app(config)
    other = write_tiny_bundle(tmp_path / "other")
    (other / "infer.onnx").write_bytes(b"other graph")
    from formats import durable
    from formats.bundle import file_entries, load_bundle
    manifest = load_bundle(other, verify=False).manifest
    durable.write_json(other / "manifest.json", {**manifest, "files": file_entries(other)})
    with pytest.raises(RuntimeError, match="different infer.onnx"):
        create_app({**config, "BUNDLE_DIR": str(other)})
    assert create_app({**config, "BUNDLE_DIR": None}).extensions["fedurl.coordinator"].version == 1


def test_a_data_dir_warns_of_bundle_files_it_does_not_serve(config, tmp_path, caplog):
    """The same graphs with a new counts.bin (python -m model.counts on the bundle): the data dir
    resumes with the files it started with, and says so."""
    create_app(config)
    bundle = tmp_path / "bundle"
    shutil.copytree(config["BUNDLE_DIR"], bundle)
    (bundle / "counts.bin").write_bytes(b"new counts")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["counts.bin"] = file_entries(bundle, ["counts.bin"])["counts.bin"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="fedurl.server"):
        create_app({**config, "BUNDLE_DIR": str(bundle)})
    warned = [r for r in caplog.records if r.getMessage() == "bundle_files_not_served"]
    assert warned and warned[0].fields["files"] == ["counts.bin"]


def test_rate_limiter_bursts_then_refills():
    """A burst of `per_minute` passes, the next waits; a second later one more token is back."""
    limiter = RateLimiter(per_minute=60)
    assert all(limiter.acquire("a", 100.0) == 0.0 for _ in range(60))
    assert limiter.acquire("a", 100.0) == pytest.approx(1.0)
    assert limiter.acquire("b", 100.0) == 0.0  # keys are independent
    assert limiter.acquire("a", 101.0) == 0.0
    assert limiter.acquire("a", 101.0) > 0


def test_rate_limiter_forgets_only_full_buckets():
    """Past max_keys, refilled buckets are dropped; a throttled key stays throttled."""
    limiter = RateLimiter(per_minute=1, max_keys=2)
    assert limiter.acquire("idle", 0.0) == 0.0
    assert limiter.acquire("busy", 50.0) == 0.0
    assert limiter.acquire("new", 70.0) == 0.0  # "idle" has refilled and is forgotten, "busy" has not
    assert set(limiter._buckets) == {"busy", "new"}
    assert limiter.acquire("busy", 70.0) > 0
