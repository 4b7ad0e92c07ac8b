"""The server's seams: strategies chosen by a setting, one module owning SQL, domain errors, init-db."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from client.protocol import FederatedClient
from server import db, refusals, schema
from server.app import create_app
from server.errors import STATUS
from tests.server.conftest import small_delta

SERVER = Path(__file__).resolve().parents[2] / "server"


def upload(app, value: float, examples: int = 10) -> dict:
    """One new client uploads a constant delta."""
    fed = FederatedClient(app.test_client())
    return fed.upload(small_delta(value), fed.ticket(), examples, 5.0, 4.0)


def imports(path: Path) -> set[str]:
    """Every module name a source file imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("aggregator, values, expected", [
    ("fedavg", (0.1, 0.2, 2.1), 0.8),
    ("median", (0.1, 0.2, 2.1), 0.2),
    ("trimmed_mean", (0.1, 0.2, 2.1, -2.0, 0.3), 0.2),
])
def test_the_aggregator_setting_picks_the_strategy(config, aggregator, values, expected):
    """AGGREGATOR=median ignores the outlier; trimmed_mean (20 %) drops the extremes; a restart
    mid-round changes nothing (the robust strategies read the deltas back from the spool)."""
    # Prepare
    settings = {**config, "AGGREGATOR": aggregator, "TRIM_FRACTION": 0.2, "MIN_CLIENTS": len(values)}
    app = create_app(settings)
    v1 = app.extensions["fedurl.coordinator"].store.weights(1)
    # Execute
    for value in values[:2]:
        upload(app, value)
    app = create_app(settings)
    for value in values[2:]:
        upload(app, value)
    # Assert
    coordinator = app.extensions["fedurl.coordinator"]
    assert coordinator.version == 2
    assert coordinator.store.manifest(2)["aggregation"]["aggregator"] == aggregator
    for name, array in coordinator.store.weights(2).items():
        np.testing.assert_allclose(array, v1[name] + expected, rtol=1e-5)
    assert FederatedClient(app.test_client()).status()["aggregator"] == aggregator


def test_an_unknown_aggregator_stops_the_start(config):
    """A misspelt strategy fails at start-up, not when the first round closes."""
    with pytest.raises(ValueError, match="unknown aggregator 'krum'"):
        create_app({**config, "AGGREGATOR": "krum"})


def test_init_db_creates_the_schema(app):
    """`flask --app server.app init-db` creates every table on an empty database."""
    # Prepare
    engine = db.get_engine(app)
    schema.metadata.drop_all(engine)
    assert sa.inspect(engine).get_table_names() == []
    # Execute
    result = app.test_cli_runner().invoke(args=["init-db"])
    # Assert
    assert result.exit_code == 0 and "database ready" in result.output
    assert set(sa.inspect(engine).get_table_names()) == set(schema.metadata.tables)


def test_only_db_runs_sql():
    """db.py holds every statement; only it and schema.py import SQLAlchemy."""
    sql_modules = {p.name for p in SERVER.glob("*.py") if "sqlalchemy" in imports(p)}
    executing = {p.name for p in SERVER.glob("*.py") if ".execute(" in p.read_text()}
    assert sql_modules == {"db.py", "schema.py"}
    assert executing == {"db.py"}


@pytest.mark.parametrize("module", ["rounds.py", "recovery.py", "strategies.py", "aggregate.py",
                                    "refusals.py"])
def test_domain_modules_know_no_http(module):
    """The coordinator, start-up and the math raise domain refusals; only the blueprints speak HTTP."""
    assert not {name for name in imports(SERVER / module)
                if name.split(".")[0] in {"flask", "werkzeug"} or name == "server.errors"}


def test_every_refusal_has_an_http_status():
    """Each domain refusal maps to a 4xx in errors.STATUS."""
    classes = [c for c in vars(refusals).values()
               if isinstance(c, type) and issubclass(c, refusals.Refused) and c is not refusals.Refused]
    assert sorted(c.__name__ for c in classes) == sorted(c.__name__ for c in STATUS)
    assert all(400 <= status < 500 for status in STATUS.values())


def test_an_older_database_gains_the_new_columns(tmp_path):
    """A database made before updates.sha256 existed gets the column on start; its rows stay."""
    # Prepare: the updates table as it was, with one row
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    old = sa.MetaData()
    columns = [sa.Column(c.name, c.type, primary_key=c.primary_key) for c in schema.updates.columns
               if c.name != "sha256"]
    sa.Table("updates", old, *columns)
    engine = sa.create_engine(url)
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO updates VALUES "
                             "(1, 1, 'client-01', 'k', 1, 0, 5, 5.0, 1.0, 0.5, 0.1, 0.0)"))
    engine.dispose()
    # Execute
    engine = db.create_engine(url)
    # Assert
    assert "sha256" in {c["name"] for c in sa.inspect(engine).get_columns("updates")}
    with db.transaction(engine) as conn:
        assert db.round_updates(conn, 1) == [db.StoredUpdate("k", 5.0, None)]
