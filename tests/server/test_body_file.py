"""FRONT_BODY_DIR: behind the trusted front an upload's body is the file nginx names, never
a file a client names."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from client.protocol import FederatedClient, encode_update
from server.api import BODY_FILE_HEADER
from server.app import create_app
from tests.server.conftest import small_delta, snapshot

OCTET = {"Content-Type": "application/octet-stream"}


def body_for(fed: FederatedClient) -> bytes:
    """A valid update body on a fresh ticket of fed's client."""
    return encode_update(small_delta(), fed.ticket(), fed.client_id, 10, 5.0, 4.0)


@pytest.fixture
def front(config, tmp_path):
    """An app that trusts a front writing bodies into tmp_path/body: (app, test client, folder)."""
    folder = tmp_path / "body"
    folder.mkdir()
    app = create_app({**config, "FRONT_BODY_DIR": str(folder)})
    return app, app.test_client(), folder


def test_without_a_trusted_front_the_header_is_refused(app, client, tmp_path):
    """Plain fedurl-serve: a client naming a file (even a valid body's) gets 400 bad_body_file,
    with or without a body of its own, and nothing changes; the same upload in the body is taken.
    """
    # Prepare
    fed = FederatedClient(client)
    body = body_for(fed)
    named = tmp_path / "0000000001"
    named.write_bytes(body)
    before = snapshot(app)
    # Execute
    answers = [client.post("/api/updates", data=data, headers={**OCTET, BODY_FILE_HEADER: str(named)})
               for data in (b"", body)]
    after = snapshot(app)
    accepted = client.post("/api/updates", data=body, headers=OCTET)
    # Assert
    assert [(a.status_code, a.get_json()["error"]) for a in answers] == [(400, "bad_body_file")] * 2
    assert after == before
    assert accepted.status_code == 202


def test_the_fronts_file_is_linked_into_the_spool_and_counted_once(front):
    """The front's file becomes the stored body (a link, fsynced), counted once; the front's own
    name stays for nginx to remove, and nothing is left staged."""
    # Prepare
    app, client, folder = front
    fed = FederatedClient(client)
    body = body_for(fed)
    named = folder / "0000000007"
    named.write_bytes(body)
    # Execute
    answer = client.post("/api/updates", headers={**OCTET, BODY_FILE_HEADER: str(named)})
    again = client.post("/api/updates", headers={**OCTET, BODY_FILE_HEADER: str(named)})
    # Assert
    assert answer.status_code == 202 and answer.get_json()["updates_in_round"] == 1
    # the same name again (nginx deletes it once answered): the file is the stored body's now
    assert (again.status_code, again.get_json()["error"]) == (400, "bad_body_file")
    spool = app.extensions["fedurl.coordinator"].spool
    stored = list((spool.root / "1").iterdir())
    assert [path.read_bytes() for path in stored] == [body]
    assert os.stat(named).st_ino == stored[0].stat().st_ino and named.read_bytes() == body
    assert not list(spool.incoming.iterdir())
    assert FederatedClient(client).status()["accepted"] == 1


def test_a_front_body_without_the_header_is_read_from_the_request(front):
    """Behind the front a request without the header (a direct connection to the worker) is read
    as plain fedurl-serve reads it."""
    _, client, _ = front
    fed = FederatedClient(client)
    assert client.post("/api/updates", data=body_for(fed), headers=OCTET).status_code == 202


@pytest.mark.parametrize("case", ["outside", "dotdot", "symlink", "not_digits", "folder", "missing",
                                  "relative", "hard_link", "fifo"])
def test_a_name_outside_the_fronts_folder_is_refused(front, tmp_path, monkeypatch, case):
    """Even with a trusted front, only a plain file directly in FRONT_BODY_DIR with nginx's digits
    name is read: a path elsewhere, through ``..`` or a symbolic link, a directory or a missing file,
    a hard link to a file that has another name (nginx's files have one), a FIFO (before: opening it
    blocked the worker's thread) is 400 bad_body_file, before any decode or write."""
    # Prepare
    app, client, folder = front
    fed = FederatedClient(client)
    outside = tmp_path / "0000000009"
    outside.write_bytes(body_for(fed))
    (folder / "sub").mkdir()
    named = {"outside": outside, "dotdot": folder / "sub" / ".." / "0000000009",
             "symlink": folder / "0000000003", "not_digits": folder / "body.st",
             "folder": folder / "0000000004", "missing": folder / "0000000005",
             "relative": Path("0000000009"), "hard_link": folder / "0000000006",
             "fifo": folder / "0000000008"}[case]
    if case == "symlink":
        named.symlink_to(outside)
    elif case == "not_digits":
        named.write_bytes(outside.read_bytes())
    elif case == "folder":
        named.mkdir()
    elif case == "hard_link":
        os.link(outside, named)
    elif case == "fifo":
        os.mkfifo(named)
    (folder / "0000000009").write_bytes(outside.read_bytes())  # what "dotdot" would reach
    calls: list[str] = []
    monkeypatch.setattr("server.api.decode_upload", lambda *a: calls.append("decode"))
    before = snapshot(app)
    # Execute
    answer = client.post("/api/updates", headers={**OCTET, BODY_FILE_HEADER: str(named)})
    # Assert
    assert (answer.status_code, json.loads(answer.data)["error"]) == (400, "bad_body_file")
    assert calls == [] and snapshot(app) == before


def test_a_front_on_another_file_system_has_its_file_copied(front, monkeypatch):
    """When the front's folder is on another file system than the spool (a link fails with EXDEV),
    the body is copied instead, and stored the same."""
    # Prepare
    app, client, folder = front
    fed = FederatedClient(client)
    body = body_for(fed)
    named = folder / "0000000011"
    named.write_bytes(body)

    def cross_device(*_args, **_kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr("server.spool.os.link", cross_device)
    # Execute
    answer = client.post("/api/updates", headers={**OCTET, BODY_FILE_HEADER: str(named)})
    # Assert
    assert answer.status_code == 202
    stored = list((app.extensions["fedurl.coordinator"].spool.root / "1").iterdir())
    assert [path.read_bytes() for path in stored] == [body]
    assert os.stat(named).st_ino != stored[0].stat().st_ino


@pytest.mark.parametrize("moved", ["deleted", "replaced"])
def test_the_file_the_app_opened_is_stored_whatever_its_name_means_by_then(front, monkeypatch, moved):
    """Between the app opening the front's file and the spool storing it, nginx may delete the
    name (``clean``, when the client goes away) or the name may come to mean another file: the
    body the app checked is stored (before: a link by name, FileNotFoundError and a 500, or the
    other file)."""
    # Prepare
    app, client, folder = front
    coordinator = app.extensions["fedurl.coordinator"]
    body = body_for(FederatedClient(client))
    named = folder / "0000000042"
    named.write_bytes(body)
    vet = coordinator.vet_ticket

    def vet_then_the_name_moves(*args):
        vet(*args)
        os.unlink(named)
        if moved == "replaced":
            named.write_bytes(b"\0" * len(body))

    monkeypatch.setattr(coordinator, "vet_ticket", vet_then_the_name_moves)
    # Execute
    answer = client.post("/api/updates", headers={**OCTET, BODY_FILE_HEADER: str(named)})
    # Assert
    assert answer.status_code == 202, answer.get_json()
    assert [path.read_bytes() for path in (coordinator.spool.root / "1").iterdir()] == [body]
    assert not list(coordinator.spool.incoming.iterdir())
