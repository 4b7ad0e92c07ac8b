"""Fixtures: a tiny fake bundle (the server never runs its graphs), a fresh app per test."""

from __future__ import annotations

import hashlib
import io
import logging
import signal
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from client.protocol import FederatedClient
from formats import durable
from formats import tensors as tensor_codec
from formats.bundle import BUNDLE_FILES, MANIFEST, file_entries
from server import db, logs
from server.app import create_app

ADMIN_TOKEN = "test-admin-token-0123456789abcdef-32+"  # at least 32 bytes, as start-up requires
TINY_PARAMETERS = {"embed.weight": (4, 3), "head.bias": (5,)}


def as_background_job() -> None:
    """A Popen preexec_fn: the child starts as a script's ``command &`` would, with SIGINT and
    SIGQUIT ignored (POSIX: asynchronous commands without job control)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)


def write_tiny_bundle(directory, parameters=TINY_PARAMETERS, seed=0):
    """A valid bundle whose graphs and counts are placeholder bytes: enough for the server, which
    never runs them (counts.bin, optional in a bundle, is there so every test serves one)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    weights = {name: rng.normal(size=shape).astype(np.float32) for name, shape in parameters.items()}
    tensor_codec.save(directory / "weights.safetensors", weights)
    for name in ("tokenizer.model", "tokenizer.json", "infer.onnx", "train_step.onnx", "counts.bin"):
        (directory / name).write_bytes(f"placeholder {name}".encode())
    manifest = {"format_version": 1, "model_version": 1, "parent_version": None,
                "created": "2026-01-01T00:00:00Z", "config": {}, "tokenizer": {},
                "parameters": [{"name": n, "shape": list(s), "dtype": "float32"}
                               for n, s in parameters.items()],
                "graphs": {}, "files": file_entries(directory, [*BUNDLE_FILES, "counts.bin"])}
    durable.write_json(directory / MANIFEST, manifest)
    return directory


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A tiny bundle, written once per session (the server copies it into each data dir)."""
    return write_tiny_bundle(tmp_path_factory.mktemp("tiny-bundle"))


def pytest_generate_tests(metafunc):
    """Run the tests of a module marked ``databases("sqlite", "postgresql")`` once per database."""
    marker = metafunc.definition.get_closest_marker("databases")
    if marker is not None and "database" in metafunc.fixturenames:
        metafunc.parametrize("database", marker.args, indirect=True)


@pytest.fixture
def database(request) -> str:
    """Which database the test's server uses: sqlite (the default) or postgresql."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def config(tiny_bundle, tmp_path, database, request):
    """Settings of a test server: fresh data dir (and a fresh PostgreSQL database when the test runs
    on it), small rounds, no deadline thread.

    Open selection, plain aggregation, no identity proofs, influence unbounded, no DP noise: these tests
    exercise rounds, updates and storage with clients that take tickets directly and check exact FedAvg
    means. The defaults run in tests/server/test_cohorts.py, test_influence.py, test_integration.py.
    """
    settings = {"BUNDLE_DIR": str(tiny_bundle), "DATA_DIR": str(tmp_path / "data"), "MIN_CLIENTS": 3,
                "MIN_CLIENTS_FLOOR": 2, "TICK_INTERVAL_S": 0, "ADMIN_TOKEN": ADMIN_TOKEN,
                "LOG_LEVEL": "WARNING", "MAX_UPDATE_NORM": 10.0, "MAX_NUM_EXAMPLES": 1000,
                "SELECTION": "open", "IDENTITY": "", "INFLUENCE": "none", "AGGREGATION": "plain",
                "DP_NOISE_MULTIPLIER": 0.0}
    if database == "postgresql":
        settings["DATABASE_URL"] = request.getfixturevalue("postgresql_url")
        request.getfixturevalue("dispose_engines")
    return settings


@pytest.fixture
def another_database(database, request):
    """Makes settings for one more empty database of the test's kind: {} on SQLite (each DATA_DIR has
    its own file), a new DATABASE_URL on PostgreSQL."""
    def make() -> dict:
        if database != "postgresql":
            return {}
        cluster = request.getfixturevalue("postgresql_cluster")
        name, url = cluster.database()
        request.addfinalizer(lambda: cluster.drop(name))
        return {"DATABASE_URL": url}

    return make


@pytest.fixture
def dispose_engines(monkeypatch):
    """Close the pooled connections of every engine the test's apps open, when the test ends (psycopg
    warns about a connection left to the garbage collector, and warnings are errors here)."""
    engines, create = [], db.create_engine

    def tracked(url):
        engine = create(url)
        engines.append(engine)
        return engine

    monkeypatch.setattr(db, "create_engine", tracked)
    yield
    for engine in engines:
        engine.dispose()


@pytest.fixture
def log_lines():
    """Every server log line written during the test, as text (LOG_LEVEL still filters them)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonLines())
    logger = logging.getLogger(logs.LOGGER)
    logger.addHandler(handler)
    yield lambda: stream.getvalue().splitlines()
    logger.removeHandler(handler)


@pytest.fixture
def app(config):
    """A fresh app on a temp database."""
    return create_app(config)


@pytest.fixture
def client(app):
    """Flask test client."""
    return app.test_client()


@pytest.fixture
def fed(client):
    """A protocol client talking to the test app."""
    return FederatedClient(client)


@pytest.fixture
def admin_headers():
    """Authorization header with the test admin token."""
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def small_delta(value: float = 0.1) -> dict[str, np.ndarray]:
    """A delta for the tiny model with every element equal to value."""
    return {name: np.full(shape, value, np.float32) for name, shape in TINY_PARAMETERS.items()}


def fetch(client, path: str, **kwargs):
    """GET path, read the body and close the response (file responses hold an open file)."""
    response = client.get(path, **kwargs)
    response.get_data()
    response.close()
    return response


def snapshot(app) -> dict:
    """Everything an update could change: every table but the refusal counters, the version and
    spool files on disk, and the coordinator's view of the round. Equal snapshots mean nothing changed."""
    engine = app.extensions["fedurl.engine"]
    with db.transaction(engine) as conn:
        tables = {t.name: sorted(repr(tuple(row)) for row in conn.execute(sa.select(t)))
                  for t in db.metadata.sorted_tables if t.name != "rejections"}
    root = Path(app.config["DATA_DIR"])
    files = sorted((str(p.relative_to(root)), hashlib.sha256(p.read_bytes()).hexdigest())
                   for folder in ("versions", "spool") for p in (root / folder).rglob("*") if p.is_file())
    progress = app.extensions["fedurl.coordinator"].progress()
    running = (progress.version, progress.round, progress.updates)
    return {"tables": tables, "files": files, "running": running}


def rejected(app, code: str) -> int:
    """How many requests were refused with code so far."""
    with app.test_client() as c:
        return c.get("/api/status").get_json()["rejected"].get(code, 0)


