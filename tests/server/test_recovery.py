"""Start-up never trusts the disk blindly: unknown versions, damaged spool bodies, damaged old
versions (docs/PROTOCOL.md and server/README.md, Durability)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from client.protocol import FederatedClient, encode_update
from formats.update import Q8, decode_update, dequantise
from server.app import create_app
from tests.server.conftest import TINY_PARAMETERS, fetch, small_delta

pytestmark = pytest.mark.databases("sqlite", "postgresql")


def upload(app, value: float, examples: int = 10) -> dict:
    """One new client uploads a constant delta."""
    fed = FederatedClient(app.test_client())
    return fed.upload(small_delta(value), fed.ticket(), examples, 5.0, 4.0)


def coordinator(app):
    """The app's coordinator."""
    return app.extensions["fedurl.coordinator"]


def versions_on_disk(config) -> list[str]:
    """Names under DATA_DIR/versions."""
    return sorted(p.name for p in (Path(config["DATA_DIR"]) / "versions").iterdir())


def spool_bodies(config) -> list[Path]:
    """The open round's stored bodies, oldest first."""
    return sorted((Path(config["DATA_DIR"]) / "spool").rglob("*.st"), key=lambda p: p.stat().st_mtime_ns)


def overwrite_tensors(path: Path, value: float) -> None:
    """Replace every tensor element of a stored body with value, keeping its size and header."""
    data = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    start = 8 + header_len
    for name, info in header.items():
        if name != "__metadata__":
            begin, end = info["data_offsets"]
            data[start + begin:start + end] = np.full((end - begin) // 4, value, np.float32).tobytes()
    path.write_bytes(bytes(data))


def three_versions(config):
    """An app after two closed rounds: versions 1, 2, 3."""
    app = create_app(config)
    for value in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6):
        upload(app, value)
    assert versions_on_disk(config) == ["1", "2", "3"]
    return app


# -- [H] 1: an empty or new database never deletes the model history ----------------------------

def test_a_new_database_url_refuses_to_start_and_keeps_every_version(config, tmp_path):
    """DATABASE_URL pointing at a new database: start-up stops with a clear message, and versions
    1, 2, 3 are still there (they used to be swept, leaving only a re-imported 1)."""
    three_versions(config)
    other = {**config, "DATABASE_URL": f"sqlite:///{tmp_path / 'new.sqlite3'}"}
    with pytest.raises(RuntimeError, match=r"versions \[1, 2, 3\].*database"):
        create_app(other)
    assert versions_on_disk(config) == ["1", "2", "3"]


def test_a_deleted_database_file_refuses_to_start_and_keeps_every_version(config):
    """The database lost (the SQLite file deleted, PostgreSQL's tables dropped): same refusal,
    nothing on disk removed."""
    three_versions(config)
    for path in Path(config["DATA_DIR"]).glob("fedurl.sqlite3*"):
        path.unlink()
    if "DATABASE_URL" in config:
        engine = sa.create_engine(config["DATABASE_URL"], poolclass=sa.NullPool)
        tables = sa.MetaData()
        tables.reflect(engine)
        tables.drop_all(engine)
    with pytest.raises(RuntimeError, match="does not know"):
        create_app(config)
    assert versions_on_disk(config) == ["1", "2", "3"]


def test_the_one_version_a_crash_leaves_is_quarantined_not_deleted(config):
    """A version directory renamed into place whose row never committed (kill -9 mid-publish) is
    moved to DATA_DIR/quarantine/versions, and the round closes again into a fresh version."""
    app = create_app(config)
    c = coordinator(app)
    c.store.write(c.manifest, 2, {n: a + 99 for n, a in c.weights.items()}, {}, {}, 0.0)
    restarted = create_app(config)
    quarantined = list((Path(config["DATA_DIR"]) / "quarantine" / "versions").iterdir())
    assert versions_on_disk(config) == ["1"] and [p.name.split(".")[0] for p in quarantined] == ["2"]
    assert coordinator(restarted).version == 1


# -- [H] 2: a corrupted spool body is never published -------------------------------------------

@pytest.mark.parametrize("value", [float("nan"), 1e30])
def test_a_corrupted_spool_body_is_quarantined_not_published(config, value):
    """Overwrite one stored body's tensors with NaN (or 1e30) and restart: the body fails its
    checksum and is moved to quarantine, counted in /api/status; the next version is the mean of
    the intact updates only."""
    # Prepare
    app = create_app(config)
    v1 = coordinator(app).weights
    upload(app, 0.1)
    upload(app, 0.2)
    overwrite_tensors(spool_bodies(config)[0], value)
    # Execute
    restarted = create_app(config)
    resumed = coordinator(restarted).progress().updates
    upload(restarted, 0.3)
    upload(restarted, 0.4)
    # Assert
    assert resumed == 1
    status = FederatedClient(restarted.test_client()).status()
    assert status["version"] == 2 and status["quarantined"] == 1
    for name, array in coordinator(restarted).store.weights(2).items():
        assert np.isfinite(array).all()
        np.testing.assert_allclose(array, v1[name] + 0.3, rtol=1e-5)
    assert len(list((Path(config["DATA_DIR"]) / "quarantine" / "spool").rglob("*.st"))) == 1


def test_a_body_without_checksum_is_validated_again(config):
    """A body that matches no stored checksum (a row from before checksums) is decoded and checked
    like a new upload: NaN is quarantined all the same."""
    app = create_app(config)
    upload(app, 0.1)
    upload(app, 0.2)
    from server import db, schema
    with db.transaction(db.get_engine(app)) as conn:
        conn.execute(schema.updates.update().values(sha256=None))
    overwrite_tensors(spool_bodies(config)[1], float("nan"))
    assert coordinator(create_app(config)).progress().updates == 1


def test_q8_bodies_are_replayed_as_they_decode(config):
    """Two Q8 bodies stored before a restart are decoded and checked again at start-up and count
    in the round's mean exactly as they decode (oracle: decoded here)."""
    # Prepare
    app, rng, decoded = create_app(config), np.random.default_rng(7), []
    v1 = coordinator(app).weights

    def upload_q8(app) -> None:
        fed = FederatedClient(app.test_client())
        delta = {n: rng.normal(scale=0.05, size=s).astype(np.float32) for n, s in TINY_PARAMETERS.items()}
        body = encode_update(delta, fed.ticket(), fed.client_id, 10, 5.0, 4.0, Q8, rng)
        fed.post_update(body)
        tensors = decode_update(body, 1000).tensors
        decoded.append({n: dequantise(tensors[n], tensors[n + "#scale"]) for n in TINY_PARAMETERS})

    upload_q8(app)
    upload_q8(app)
    # Execute
    restarted = create_app(config)
    resumed = coordinator(restarted).progress().updates
    upload_q8(restarted)
    # Assert
    assert resumed == 2 and coordinator(restarted).version == 2
    for name, array in coordinator(restarted).store.weights(2).items():
        mean = np.mean([d[name] for d in decoded], axis=0, dtype=np.float32)
        np.testing.assert_allclose(array, v1[name] + mean, rtol=1e-6, atol=1e-7)


def test_weights_out_of_range_are_never_published(config):
    """The last check before publishing: a server step that makes weights huge (SERVER_LR 1e30)
    is refused, the round stays open with its updates, and an admin close says why (409)."""
    app = create_app({**config, "SERVER_LR": 1e30})
    for value in (0.1, 0.2, 0.3):
        upload(app, value)
    assert coordinator(app).version == 1 and coordinator(app).progress().updates == 3
    assert versions_on_disk(config) == ["1"]
    admin = {"Authorization": f"Bearer {config['ADMIN_TOKEN']}"}
    response = app.test_client().post("/api/admin/close", headers=admin)
    assert (response.status_code, response.get_json()["error"]) == (409, "unsafe_weights")


# -- [H] 3: a truncated or missing spool body does not stop the server ---------------------------

def test_truncated_and_missing_spool_bodies_are_quarantined_and_start_goes_on(config):
    """One body truncated, one deleted: the server starts, counts both as quarantined, and the
    round completes with the third update and two new ones."""
    # Prepare
    app = create_app(config)
    v1 = coordinator(app).weights
    for value in (0.1, 0.2):
        upload(app, value)
    config_small = {**config, "MIN_CLIENTS": 4}
    app = create_app(config_small)
    upload(app, 0.3)
    truncated, missing, _ = spool_bodies(config)
    truncated.write_bytes(truncated.read_bytes()[:50])
    missing.unlink()
    # Execute
    restarted = create_app(config_small)
    resumed = coordinator(restarted).progress().updates
    for value in (0.4, 0.5, 0.6):
        upload(restarted, value)
    # Assert
    assert resumed == 1
    status = FederatedClient(restarted.test_client()).status()
    assert status["quarantined"] == 2 and status["version"] == 2
    for name, array in coordinator(restarted).store.weights(2).items():
        np.testing.assert_allclose(array, v1[name] + 0.45, rtol=1e-5)


# -- [H] 4: a damaged older version is neither served as immutable nor rolled back to ------------

def test_a_damaged_old_version_is_a_json_404_and_a_409_rollback(config, admin_headers):
    """Truncate version 2's weights: its content-addressed URL answers 404 JSON (never the
    truncated bytes under the original sha256), and a rollback to it answers 409 version_damaged
    without changing anything."""
    # Prepare
    app = three_versions(config)
    client = app.test_client()
    sha = coordinator(app).store.manifest(2)["files"]["weights.safetensors"]["sha256"]
    assert fetch(client, f"/api/files/{sha}").status_code == 200
    weights = Path(config["DATA_DIR"]) / "versions" / "2" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    # Execute
    served = fetch(client, f"/api/files/{sha}")
    rollback = client.post("/api/admin/rollback", json={"version": 2}, headers=admin_headers)
    # Assert
    assert (served.status_code, served.get_json()["error"]) == (404, "not_found")
    assert (rollback.status_code, rollback.get_json()["error"]) == (409, "version_damaged")
    assert coordinator(app).version == 3


def test_a_staged_body_removed_during_the_closes_sweep_does_not_fail_the_closing_upload(app, client,
                                                                                       monkeypatch):
    """The close sweeps spool/incoming while uploads on other threads delete their refused bodies:
    one gone between listing and stat is skipped (before: FileNotFoundError, the committed upload
    that closed the round got a 500 and the round stayed open)."""
    # Prepare: two of three updates in; a refused upload's staged body vanishes as it is looked at
    feds = [FederatedClient(client) for _ in range(3)]
    for fed in feds[:2]:
        fed.upload(small_delta(), fed.ticket(), 10, 5.0, 4.0)
    ghost = coordinator(app).spool.incoming / "refused-upload.tmp"
    ghost.write_bytes(b"x")
    real_stat = Path.stat

    def stat(self, *args, **kwargs):
        if self == ghost:
            ghost.unlink(missing_ok=True)
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    # Execute
    answer = feds[2].upload(small_delta(), feds[2].ticket(), 10, 5.0, 4.0)
    # Assert
    assert answer["accepted"] and feds[2].status()["version"] == 2


def test_the_first_body_of_a_round_makes_its_new_directory_durable(app, client, monkeypatch):
    """A round's spool directory is new with its first body: the spool root, where its entry lives,
    is fsynced before the 202 as well as the directory itself."""
    synced = []
    monkeypatch.setattr("server.spool.durable.fsync_dir", synced.append)
    fed = FederatedClient(client)
    fed.upload(small_delta(), fed.ticket(), 10, 5.0, 4.0)
    spool = coordinator(app).spool
    assert spool.root / "1" in synced and spool.root in synced
