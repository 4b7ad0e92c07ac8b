"""kill -9 in the middle of a round loses no update that got 202, and the round still completes.

The server runs its defaults (a server-chosen cohort, proof-of-work enrollment) with the limits a
one-machine test needs: a cheap puzzle, no selection window, every client on 127.0.0.1 eligible,
no over-selection. The cohort drawn before the kill is the one that reports after it. Influence
is unbounded so the oracle is the plain weighted mean (bounded influence has its own oracle in
tests/server/test_strategies.py).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from client.protocol import FederatedClient, ProtocolError
from formats.bundle import load_bundle
from tests.server.conftest import as_background_job, write_tiny_bundle

REPO = Path(__file__).resolve().parents[2]
PARAMETERS = {"embed.weight": (4, 3), "big.weight": (256, 512)}  # 512 KiB: uploads take a moment
MIN_CLIENTS, KILLED_CLIENTS, KILL_AFTER = 40, 30, 8

pytestmark = pytest.mark.databases("sqlite", "postgresql")


class ServerProcess:
    """fedurl-serve in a subprocess on a free port; its JSON-lines log is drained by a thread."""

    def __init__(self, bundle: Path, data_dir: Path, db_url: str | None = None, settings: dict | None = None,
                 background: bool = False):
        """:param settings: FEDURL_ settings (without the prefix) over this test's.
        :param background: start it as a script's ``command &`` would (``as_background_job``).
        """
        env = {**os.environ, "FEDURL_MIN_CLIENTS": str(MIN_CLIENTS), "FEDURL_TICK_INTERVAL_S": "0",
               "FEDURL_REQUESTS_PER_ADDR_PER_MIN": "100000", "FEDURL_MAX_UPDATE_NORM": "1000",
               "FEDURL_POW_DIFFICULTY": "8", "FEDURL_SELECTION_WINDOW_S": "0",
               "FEDURL_MAX_MEMBERS_PER_NETWORK": "1000", "FEDURL_OVER_SELECTION": "0",
               "FEDURL_INFLUENCE": "none", "FEDURL_AGGREGATION": "plain",
               "FEDURL_DP_NOISE_MULTIPLIER": "0",
               **{f"FEDURL_{k}": str(v) for k, v in (settings or {}).items()}}
        command = [sys.executable, "-m", "server.cli", "--bundle", str(bundle), "--data-dir", str(data_dir),
                   "--port", "0", "--threads", "16", *(["--db", db_url] if db_url else [])]
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True,
                                        preexec_fn=as_background_job if background else None)
        self.events: list[dict] = []
        self.listening = threading.Event()
        self.drain = threading.Thread(target=self._drain, daemon=True)
        self.drain.start()
        if not self.listening.wait(60):
            self.process.kill()
            raise AssertionError(f"server did not start: {self.events[-5:]}")
        self.url = next(e["url"] for e in self.events if e.get("event") == "listening")

    def _drain(self) -> None:
        """Read log lines until the process ends (a full pipe would stall the server)."""
        for line in self.process.stderr:
            try:
                self.events.append(json.loads(line))
            except json.JSONDecodeError:
                self.events.append({"raw": line})
            if self.events[-1].get("event") == "listening":
                self.listening.set()
        self.process.stderr.close()

    def kill(self) -> None:
        """SIGKILL: no chance to flush or clean up anything."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.drain.join(10)

    def stop(self) -> None:
        """Terminate and reap."""
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.drain.join(10)


def deltas_for(count: int, seed: int) -> list[dict]:
    """Distinct random deltas."""
    rng = np.random.default_rng(seed)
    return [{n: rng.normal(scale=0.01, size=s).astype(np.float32) for n, s in PARAMETERS.items()}
            for _ in range(count)]


def draw_cohort(urls: list[str]) -> tuple[list, list, list]:
    """MIN_CLIENTS clients, spread over urls, enroll and check in; the last check-in draws the
    cohort. Returns the KILLED_CLIENTS that upload under fire with their tickets, and the rest.
    """
    clients = [FederatedClient(urls[i % len(urls)], timeout=20) for i in range(MIN_CLIENTS)]
    for client in clients:
        client.enroll()
    states = [client.check_in()["state"] for client in clients]
    assert states[-1] == "selected", "the last check-in completes the cohort"
    return clients[:KILLED_CLIENTS], clients[KILLED_CLIENTS:], [c.ticket() for c in clients[:KILLED_CLIENTS]]


def upload_until_killed(server: ServerProcess, clients: list, tickets: list, deltas: list,
                        served: set[int] | None = None) -> set[int]:
    """All clients upload at once; SIGKILL the server after KILL_AFTER 202s, at least one of them
    for a client it serves (served: their indices; None: all). Returns who got 202.
    """
    acked, lock, enough = set(), threading.Lock(), threading.Event()

    def send(i: int) -> None:
        try:
            clients[i].upload(deltas[i], tickets[i], 10 + i, 5.0, 4.0)
        except (OSError, ProtocolError, http.client.HTTPException):
            return  # the server died under this request (IncompleteRead: mid-body), so not acknowledged
        with lock:
            acked.add(i)
            if len(acked) >= KILL_AFTER and (served is None or acked & served):
                enough.set()

    with ThreadPoolExecutor(len(clients)) as pool:
        futures = [pool.submit(send, i) for i in range(len(clients))]
        assert enough.wait(60), "no uploads were acknowledged"
        server.kill()
        for future in futures:
            future.result()
    with lock:
        return set(acked)


def test_sigkill_mid_round_keeps_every_acknowledged_update(tmp_path, database, request):
    """Kill the server while uploads are in flight; after a restart every client that got 202 is
    already counted (a retry is refused as duplicate_client), and the round completes with the
    exact weighted mean of everything counted."""
    # Prepare
    bundle = write_tiny_bundle(tmp_path / "bundle", PARAMETERS)
    v1 = load_bundle(bundle).load_weights()
    data_dir = tmp_path / "data"
    db_url = request.getfixturevalue("postgresql_url") if database == "postgresql" else None
    server = ServerProcess(bundle, data_dir, db_url)
    try:
        clients, fill_clients, tickets = draw_cohort([server.url])
        deltas = deltas_for(KILLED_CLIENTS, seed=1)
        # Execute: kill -9 mid-round, restart, retry everyone, then fill the round
        acknowledged = upload_until_killed(server, clients, tickets, deltas)
        server = ServerProcess(bundle, data_dir, db_url)
        counted = FederatedClient(server.url).status()["round"]["updates"]
        retried = {i: _retry(server.url, clients[i].client_id, deltas[i], 10 + i)
                   for i in range(KILLED_CLIENTS)}
        fillers = deltas_for(MIN_CLIENTS - KILLED_CLIENTS, seed=2)
        for filler, delta in zip(fill_clients, fillers, strict=True):
            filler = FederatedClient(server.url, client_id=filler.client_id)
            assert filler.check_in()["state"] == "selected", "the cohort survived the kill"
            filler.upload(delta, filler.ticket(), 5, 5.0, 4.0)
        model = FederatedClient(server.url).fetch_model()
    finally:
        server.stop()
    # Assert
    assert KILL_AFTER <= len(acknowledged) < KILLED_CLIENTS, "the kill should land mid-round"
    assert counted >= len(acknowledged)
    assert all(retried[i] == "duplicate_client" for i in acknowledged), retried
    assert sum(r == "duplicate_client" for r in retried.values()) == counted
    assert model["version"] == 2
    weights = [10 + i for i in range(KILLED_CLIENTS)] + [5] * len(fillers)
    v2 = load_bundle(data_dir / "versions" / "2").load_weights()  # verifies every sha256
    for name in PARAMETERS:
        pairs = zip(weights, deltas + fillers, strict=True)
        mean = sum(w * d[name].astype(np.float64) for w, d in pairs) / sum(weights)
        np.testing.assert_allclose(v2[name], v1[name] + mean, rtol=1e-5, atol=1e-7)
    assert sorted(p.name for p in (data_dir / "versions").iterdir()) == ["1", "2"]


def _retry(url: str, client_id: str, delta: dict, examples: int) -> str:
    """Upload again as the same client: 'duplicate_client' if its first upload was stored."""
    client = FederatedClient(url, client_id=client_id)
    try:
        client.upload(delta, client.ticket(), examples, 5.0, 4.0)
    except ProtocolError as refused:
        return refused.code
    return "accepted"
