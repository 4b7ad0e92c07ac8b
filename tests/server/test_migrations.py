"""Alembic migrations: they build schema.py's tables, upgrade older databases, and fail loudly when
schema.py gains a table that no migration creates (server/migrations/README.md)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory

from server import db, migrations, schema

pytestmark = pytest.mark.databases("sqlite", "postgresql")


def url_of(database, tmp_path, request) -> str:
    """A new empty database of the given kind."""
    if database == "postgresql":
        return request.getfixturevalue("postgresql_url")
    return f"sqlite:///{tmp_path / 'fedurl.sqlite3'}"


FIRST_RELEASE_TABLES = {"versions", "files", "rounds", "tickets", "updates", "rejections"}  # revision 0001
ADDED_SINCE = {"updates": ["sha256", "network", "seat"],  # 0002, 0005
               "rounds": ["phase", "selected_at", "carried", "detail"]}  # 0003
ADDED_AFTER_0002 = ["network", "seat"]  # updates, 0005


def tables_before_migrations(names: set[str], added: dict[str, list[str]]) -> sa.MetaData:
    """schema.py's tables of those names without the columns added since (and the unique keys over
    them), as ``create_all`` made them before migrations."""
    old = sa.MetaData()
    for table in schema.metadata.sorted_tables:
        if table.name in names:
            table.to_metadata(old)
    for name, columns in added.items():
        table = old.tables[name]
        for constraint in [c for c in table.constraints if isinstance(c, sa.UniqueConstraint)
                           and set(c.columns.keys()) & set(columns)]:
            table.constraints.remove(constraint)
        for column in columns:
            table._columns.remove(table.c[column])
    return old


def first_release_database(url: str) -> None:
    """A database as the first release's ``create_all`` left it: no alembic_version, no sha256, no
    quarantine table; one accepted update."""
    old = tables_before_migrations(FIRST_RELEASE_TABLES, ADDED_SINCE)
    updates = old.tables["updates"]
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(updates.insert().values(id=1, round_id=1, client_id="client-01", ticket_digest="k",
                                             base_version=1, staleness=0, num_examples=5, weight=5.0,
                                             loss_before=1.0, loss_after=0.5, norm=0.1, received_at=0.0))
    engine.dispose()


def test_the_migrations_build_schema_py(database, tmp_path, request):
    """upgrade head on an empty database gives exactly schema.py's tables: autogenerate finds nothing."""
    engine = db.create_engine(url_of(database, tmp_path, request))
    with engine.connect() as conn:
        assert migrations.differences(conn) == []
    head = ScriptDirectory.from_config(migrations.config()).get_current_head()
    assert migrations.current_revision(engine) == head
    engine.dispose()


def test_a_table_without_a_migration_is_found(database, tmp_path, request):
    """A table added to schema.py but to no migration shows up as a difference (so the test above fails)."""
    engine = db.create_engine(url_of(database, tmp_path, request))
    newer = sa.MetaData()
    for table in schema.metadata.sorted_tables:
        table.to_metadata(newer)
    sa.Table("not_yet_migrated", newer, sa.Column("id", sa.Integer, primary_key=True))
    with engine.connect() as conn:
        found = migrations.differences(conn, newer)
    assert [(kind, table.name) for kind, table in found] == [("add_table", "not_yet_migrated")]
    engine.dispose()


def test_a_first_release_database_is_upgraded(database, tmp_path, request):
    """A database made before migrations (no updates.sha256, no quarantine) gains both on start; its
    rows stay, and it is then at head like a new one."""
    url = url_of(database, tmp_path, request)
    first_release_database(url)
    engine = db.create_engine(url)
    with engine.connect() as conn:
        assert migrations.differences(conn) == []
    with db.transaction(engine) as conn:
        assert db.round_updates(conn, 1) == [db.StoredUpdate("k", 5.0, None)]
        assert db.quarantined_count(conn) == 0
        assert (db.seats_taken(conn, 1, ""), db.has_update(conn, 1, "client-01")) == (set(), True)
    engine.dispose()


def test_a_database_of_the_previous_release_is_adopted(database, tmp_path, request):
    """A pre-Alembic database that already had sha256 and quarantine (create_all of the 0002
    schema) is stamped at 0002, not migrated again, then upgraded to head."""
    url = url_of(database, tmp_path, request)
    previous = tables_before_migrations(FIRST_RELEASE_TABLES | {"quarantine"},  # as revision 0002 left them
                                        {"updates": ADDED_AFTER_0002, "rounds": ADDED_SINCE["rounds"]})
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    previous.create_all(engine)
    with engine.connect() as conn:
        assert migrations._legacy_revision(conn) == migrations.CHECKSUMS
    engine.dispose()
    engine = db.create_engine(url)  # stamped 0002, then upgraded to head
    head = ScriptDirectory.from_config(migrations.config()).get_current_head()
    assert migrations.current_revision(engine) == head
    with engine.connect() as conn:
        assert migrations.differences(conn) == []
    engine.dispose()


def test_upgrade_twice_changes_nothing_and_downgrade_undoes_it(database, tmp_path, request):
    """Every start runs upgrade head: the second is a no-op; base removes every table."""
    engine = db.create_engine(url_of(database, tmp_path, request))
    migrations.upgrade(engine)
    with engine.begin() as conn:
        command.downgrade(migrations.config(conn), "base")
    assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
