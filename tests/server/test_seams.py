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
    # Prepare: every table gone, Alembic's alembic_version too
    engine = db.get_engine(app)
    everything = sa.MetaData()
    everything.reflect(engine)
    everything.drop_all(engine)
    assert sa.inspect(engine).get_table_names() == []
    # Execute
    result = app.test_cli_runner().invoke(args=["init-db"])
    # Assert
    assert result.exit_code == 0 and "database ready" in result.output
    assert set(sa.inspect(engine).get_table_names()) == set(schema.metadata.tables) | {"alembic_version"}


def test_only_db_runs_sql():
    """db.py holds every statement; only it, schema.py and the migrations (DDL) import SQLAlchemy."""
    sources = {str(p.relative_to(SERVER)): p for p in SERVER.rglob("*.py")}
    sql_modules = {name for name, p in sources.items() if imports(p) & {"sqlalchemy", "alembic"}}
    executing = {name for name, p in sources.items() if ".execute(" in p.read_text()}
    assert {name for name in sql_modules if not name.startswith("migrations/")} == {"db.py", "schema.py"}
    assert {name for name in executing if not name.startswith("migrations/")} == {"db.py"}


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
