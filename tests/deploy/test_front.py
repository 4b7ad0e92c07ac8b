"""fedurl-deploy (deploy/front.py): nginx in front of the app, started as server/README.md says.

Everything runs on loopback. The attacking sockets come from 127.0.0.2 and the honest client from
127.0.0.1 (Linux routes all of 127/8 to lo), so per-address caps are seen doing their job. Every
loop is bounded in count and time; the slow-socket attack lasts at most ATTACK_AT_MOST_S.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from client.protocol import FederatedClient, encode_update
from deploy.front import STOP_WAIT_S
from formats.bundle import load_bundle
from server.cli import front_body_dir
from tests.server.conftest import TINY_PARAMETERS, as_background_job, write_tiny_bundle

REPO = Path(__file__).resolve().parents[2]
WEB = REPO / "web_client"
TIMEOUT_S = 2  # HEADER_, BODY_ and IDLE_TIMEOUT_S of the deployment under test
PER_ADDR = 16  # FRONT_CONNECTIONS_PER_ADDR
ATTACKER, CLIENT = "127.0.0.2", "127.0.0.1"
SLOW_SOCKETS, TRICKLING, SLOW_BODIES = 200, 100, 50  # the other 50 send nothing
TRICKLE_EVERY_S = 0.5
ATTACK_AT_MOST_S = 30.0
# What must match between nginx's answer and the app's for the same file.
SAME_HEADERS = ("Content-Type", "Content-Encoding", "Content-Length", "Cache-Control", "Vary",
                "Last-Modified", "Cross-Origin-Opener-Policy", "Cross-Origin-Embedder-Policy",
                "Cross-Origin-Resource-Policy")
ORT = "node_modules/onnxruntime-web/dist"
# URL -> (file under web_client/, its copy under DATA_DIR/front/public/)
PAGE_FILES = {"/": ("index.html", "static/index.html"), "/static/main.js": ("main.js", "static/main.js"),
              "/static/styles.css": ("styles.css", "static/styles.css"), "/sw.js": ("sw.js", "static/sw.js"),
              "/favicon.ico": ("icon.svg", "static/icon.svg"),
              "/ort/ort-wasm-simd-threaded.wasm": (f"{ORT}/ort-wasm-simd-threaded.wasm",
                                                   "ort/ort-wasm-simd-threaded.wasm"),
              "/ort/ort.wasm.min.mjs": (f"{ORT}/ort.wasm.min.mjs", "ort/ort.wasm.min.mjs")}


@pytest.fixture(autouse=True, scope="module")
def nginx_installed():
    """nginx is needed (`make nginx`): missing, it fails the run in CI and skips elsewhere."""
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").is_file():
        message = "nginx not found (make nginx installs Debian's package)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


class Deployment:
    """``fedurl-deploy`` (python -m deploy.front) on a free port; its log lines are kept by a thread."""

    def __init__(self, bundle: Path, data_dir: Path, env: dict[str, str], args: tuple[str, ...] = (),
                 background: bool = False):
        """background: start it as a script's ``command &`` would (``as_background_job``)."""
        environ = {**os.environ, "PYTHONPATH": str(REPO), "FEDURL_TICK_INTERVAL_S": "0",
                   "FEDURL_LOG_LEVEL": "INFO", "PYTHONFAULTHANDLER": "1", **env}
        self.data_dir = data_dir
        self.workers = int(args[args.index("--workers") + 1]) if "--workers" in args else 1
        self.process = subprocess.Popen([sys.executable, "-m", "deploy.front", "--bundle", str(bundle),
                                         "--data-dir", str(data_dir), "--host", CLIENT, "--port", "0", *args],
                                        cwd=REPO, env=environ, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True,
                                        preexec_fn=as_background_job if background else None)
        self.lines: list[str] = []
        self.events: dict[str, dict] = {}  # the first of each name
        self.log: list[dict] = []  # every event, in order
        self.timed_out: list[dict] = []  # the app's connections_timed_out events
        self.drain = threading.Thread(target=self._drain, daemon=True)
        self.drain.start()
        if not self.wait_for("listening", 90):
            self.stop()
            pytest.fail("fedurl-deploy did not start:\n" + "".join(self.lines[-30:]))
        listening = self.events["listening"]
        self.port = int(listening["url"].rsplit(":", 1)[1])
        self.app_port = int(listening["app_url"].rsplit(":", 1)[1])
        self.public = Path(listening["front"]) / "public"

    def _drain(self) -> None:
        """Keep every stderr line (the app's JSON events and nginx's own lines) until the process ends."""
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.events.setdefault(event.get("event"), event)
            self.log.append(event)
            if event.get("event") == "connections_timed_out":
                self.timed_out.append(event["closed"])

    def wait_for_count(self, event: str, count: int, seconds: float) -> bool:
        """Whether the event was logged at least count times within seconds."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.process.poll() is None:
            if sum(e.get("event") == event for e in self.log) >= count:
                return True
            time.sleep(0.05)
        return sum(e.get("event") == event for e in self.log) >= count

    def wait_for(self, event: str, seconds: float) -> bool:
        """Whether the event was logged within seconds."""
        return self.wait_for_count(event, 1, seconds)

    def nginx_pid(self) -> int:
        """nginx's master process."""
        return int((self.data_dir / "front" / "nginx.pid").read_text())

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send sig (SIGINT is Ctrl-C) and wait for the exit; its return code. The wait covers
        fedurl-deploy's own worst case: nginx, then each worker in turn, STOP_WAIT_S before SIGKILL
        and STOP_WAIT_S after. Past it, SIGABRT: faulthandler (PYTHONFAULTHANDLER) writes where
        every thread was to stderr, printed here for the failure's report."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(2 * STOP_WAIT_S * (1 + self.workers) + 10)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGABRT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.drain.join(10)
            print("fedurl-deploy did not stop; its last lines:\n" + "".join(self.lines[-80:]))
            code = -signal.SIGKILL
        self.drain.join(10)
        assert self.process.stderr is not None
        self.process.stderr.close()
        return code


def request(port: int, method: str, path: str, headers: dict | None = None, body: bytes | None = None,
            source: str = CLIENT, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection from source: (status, headers, raw body)."""
    connection = http.client.HTTPConnection(CLIENT, port, timeout=timeout, source_address=(source, 0))
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """One deployment for the module, with short timeouts and small per-address caps."""
    if not (WEB / "node_modules" / "onnxruntime-web" / "dist").is_dir():
        pytest.fail("web_client/node_modules is missing: run `make install` (npm ci)")
    root = tmp_path_factory.mktemp("deploy")
    env = {**{f"FEDURL_{k}_TIMEOUT_S": str(TIMEOUT_S) for k in ("HEADER", "BODY", "IDLE")},
           "FEDURL_FRONT_CONNECTIONS_PER_ADDR": str(PER_ADDR), "FEDURL_MAX_TICKETS_PER_ADDR": "2",
           # open selection, no enrollment: the ticket test counts tickets per address through nginx
           "FEDURL_SELECTION": "open", "FEDURL_IDENTITY": "", "FEDURL_AGGREGATION": "plain"}
    running = Deployment(write_tiny_bundle(root / "bundle"), root / "data", env)
    yield running
    running.stop()


@pytest.mark.parametrize("path", sorted(PAGE_FILES))
def test_page_files_come_precompressed_by_nginx_with_the_apps_headers(deployment, path):
    """nginx sends the .gz written at start, with the headers the app sends for the same file, and
    the plain file to a client that does not take gzip."""
    # The app compresses at the lowest CPU priority: slow on a loaded machine
    assert deployment.wait_for("precompressed", 180), "the app's own gzip cache is needed for the comparison"
    source_name, public_name = PAGE_FILES[path]
    source = (WEB / source_name).read_bytes()
    gz = {"Accept-Encoding": "gzip"}
    status, front, body = request(deployment.port, "GET", path, gz)
    _, app, app_body = request(deployment.app_port, "GET", path, gz)
    assert status == 200 and front["Content-Encoding"] == "gzip"
    assert body == (deployment.public / f"{public_name}.gz").read_bytes()  # nginx's file, not the app's
    assert gzip.decompress(body) == source == gzip.decompress(app_body)
    assert {h: front.get(h) for h in SAME_HEADERS} == {h: app.get(h) for h in SAME_HEADERS}
    status, front, body = request(deployment.port, "GET", path)
    _, app, _ = request(deployment.app_port, "GET", path)
    assert status == 200 and body == source and "Content-Encoding" not in front
    assert {h: front.get(h) for h in SAME_HEADERS} == {h: app.get(h) for h in SAME_HEADERS}


@pytest.mark.parametrize("path", ["/static/node_modules/onnxruntime-web/package.json", "/static/.eslintrc",
                                  "/static/missing.js", "/ort/missing.mjs"])
def test_what_nginx_does_not_hold_is_the_apps_answer(deployment, path):
    """Paths nginx has no file for go to the app, which refuses them with its JSON 404."""
    status, headers, body = request(deployment.port, "GET", path)
    assert status == 404 and json.loads(body)["error"] == "not_found"
    assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"


@pytest.mark.parametrize("method, path, body, status, code", [
    ("POST", "/api/updates", b"x" * (2 * 2**20), 413, "payload_too_large"),
    ("POST", "/static/main.js", b"", 405, "method_not_allowed"),
])
def test_nginx_refusals_are_json_like_the_apps(deployment, method, path, body, status, code):
    """What nginx refuses itself (a body over the app's limit, a POST to a file) is the app's JSON."""
    content = {"Content-Type": "application/octet-stream"}
    answer, headers, raw = request(deployment.port, method, path, content, body)
    assert answer == status and headers["Content-Type"] == "application/json"
    assert json.loads(raw)["error"] == code
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"


def test_the_app_counts_the_client_address_not_the_proxy_nor_a_forged_header(deployment):
    """Behind nginx the app's per-address limit (MAX_TICKETS_PER_ADDR = 2) applies per client: a
    forged X-Forwarded-For does not make a third ticket, another address still gets its own."""
    def ticket(source: str, n: int, forged: str) -> int:
        body = json.dumps({"client_id": f"client-{source.replace('.', '')}-{n}"}).encode()
        return request(deployment.port, "POST", "/api/tickets", {"Content-Type": "application/json",
                                                                 "X-Forwarded-For": forged}, body, source)[0]

    assert [ticket("127.0.0.3", n, f"198.51.100.{n}") for n in range(3)] == [201, 201, 429]
    assert ticket("127.0.0.4", 0, "127.0.0.3") == 201


def test_an_upload_reaches_the_app_as_nginxs_file_and_a_clients_file_name_is_not_believed(deployment):
    """POST /api/updates through nginx: the body goes to the app as nginx's temp file (no body on
    the proxied request) and counts once; a client's own X-Fedurl-Body-File (or its underscore
    twin), even naming a valid body another client planted in nginx's body folder, is replaced by
    nginx's, so the update stored is the one sent; nginx removes its file after the request."""
    # Prepare
    def ticket(source: str, client_id: str) -> dict:
        status, _, data = request(deployment.port, "POST", "/api/tickets",
                                  {"Content-Type": "application/json"},
                                  json.dumps({"client_id": client_id}).encode(), source)
        assert status == 201, data
        return json.loads(data)

    def upload(body: bytes, source: str, headers: dict | None = None) -> tuple[int, dict]:
        status, _, data = request(deployment.port, "POST", "/api/updates",
                                  {"Content-Type": "application/octet-stream", **(headers or {})}, body,
                                  source)
        return status, json.loads(data)

    rng = np.random.default_rng(7)
    deltas = [{n: rng.normal(scale=0.01, size=s).astype(np.float32) for n, s in TINY_PARAMETERS.items()}
              for _ in range(2)]
    ids = ["honest-client-0001", "planted-client-0002"]
    bodies = [encode_update(deltas[i], ticket(f"127.0.0.{5 + i}", ids[i]), ids[i], 10, 5.0, 4.0)
              for i in range(2)]
    body_dir = deployment.data_dir.resolve() / "front" / "tmp" / "body"
    planted = body_dir / "0099999999"
    planted.write_bytes(bodies[1])
    accepted = FederatedClient(f"http://{CLIENT}:{deployment.port}").status()["accepted"]
    # Execute
    first = upload(bodies[0], "127.0.0.5", {"X-Fedurl-Body-File": str(planted),
                                            "X_Fedurl_Body_File": str(planted)})
    counted = FederatedClient(f"http://{CLIENT}:{deployment.port}").status()["accepted"]
    stored = [path.read_bytes() for path in (deployment.data_dir / "spool").glob("[0-9]*/*.st")]
    left = sorted(path.name for path in body_dir.iterdir())
    second = upload(bodies[1], "127.0.0.6")
    # Assert
    assert first[0] == 202 and first[1]["accepted"] is True
    assert counted == accepted + 1
    assert bodies[0] in stored and bodies[1] not in stored
    assert left == [planted.name]  # nginx removed its own file when the request ended
    assert second[0] == 202, "the planted body's ticket was not used by the first upload"


class SlowSockets:
    """SLOW_SOCKETS connections from ATTACKER: TRICKLING send header lines one at a time, SLOW_BODIES
    send complete headers and then a body byte now and then, the rest send nothing."""

    def __init__(self, port: int):
        self.sockets = []
        for _ in range(SLOW_SOCKETS):
            sock = socket.create_connection((CLIENT, port), timeout=5, source_address=(ATTACKER, 0))
            sock.setblocking(False)
            self.sockets.append(sock)
        self.trickling = self.sockets[:TRICKLING]
        self.bodies = self.sockets[TRICKLING:TRICKLING + SLOW_BODIES]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._trickle, daemon=True)

    def _trickle(self) -> None:
        """One more header line or body byte per socket every TRICKLE_EVERY_S, ATTACK_AT_MOST_S at most."""
        for sock in self.trickling:
            self._send(sock, b"GET /api/model HTTP/1.1\r\nHost: x\r\n")
        for sock in self.bodies:
            self._send(sock, b"POST /api/updates HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Type: application/octet-stream\r\nContent-Length: 60000\r\n\r\n")
        deadline = time.monotonic() + ATTACK_AT_MOST_S
        for line in range(int(ATTACK_AT_MOST_S / TRICKLE_EVERY_S)):
            if self.stop.wait(TRICKLE_EVERY_S) or time.monotonic() > deadline:
                return
            for sock in self.trickling:
                self._send(sock, b"X-Slow-%d: 1\r\n" % line)
            for sock in self.bodies:
                self._send(sock, b"x")

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> None:
        """Send without blocking; a socket the server closed just stays quiet."""
        try:
            sock.send(data)
        except (BlockingIOError, OSError):
            pass

    @staticmethod
    def answer(sock: socket.socket) -> bytes | None:
        """What the server sent on sock (b"" once closed), or None if nothing yet."""
        try:
            return sock.recv(4096)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    def close(self) -> None:
        """Stop trickling and close every socket."""
        self.stop.set()
        self.thread.join(ATTACK_AT_MOST_S)
        for sock in self.sockets:
            sock.close()


def test_200_slow_sockets_leave_the_model_answering(deployment):
    """200 slow sockets from one address: /api/model keeps answering through nginx at once, the
    slow bodies past the per-address cap are refused 429, the trickled headers are cut off after
    HEADER_TIMEOUT_S, and the app never sees any of them."""
    # Prepare
    assert request(deployment.port, "GET", "/api/model")[0] == 200
    slow = SlowSockets(deployment.port)
    slow.thread.start()
    started, slowest, answers = time.monotonic(), 0.0, []
    try:
        # Execute: the honest client polls the model while the sockets trickle
        while time.monotonic() - started < 3 * TIMEOUT_S + 2 and len(answers) < 100:
            before = time.monotonic()
            answers.append(request(deployment.port, "GET", "/api/model", timeout=5)[0])
            slowest = max(slowest, time.monotonic() - before)
            time.sleep(0.2)
        still_trickling = slow.thread.is_alive()
        refused = [slow.answer(sock) for sock in slow.bodies]
        cut_off = [slow.answer(sock) for sock in slow.trickling]
    finally:
        slow.close()
    # Assert
    assert set(answers) == {200} and len(answers) >= 10
    assert slowest < 1.0, f"/api/model took {slowest:.2f} s during the attack"
    assert still_trickling and time.monotonic() - started < ATTACK_AT_MOST_S + 5
    assert sum(1 for a in refused if a and a.startswith(b"HTTP/1.1 429")) >= SLOW_BODIES - PER_ADDR
    assert sum(1 for a in cut_off if a is not None) >= TRICKLING * 9 // 10  # closed (or 408) by nginx
    assert request(deployment.port, "GET", "/api/model")[0] == 200
    assert not [closed for closed in deployment.timed_out if set(closed) - {"idle"}], \
        "a slow socket reached the app"  # waitress never held one: nginx passes on whole requests only


@pytest.mark.parametrize("background", [False, True], ids=["at a terminal", "started by a script with &"])
def test_ctrl_c_stops_the_app_and_nginx(tmp_path, background):
    """The documented start, stopped as a person would: Ctrl-C ends both processes, also when a
    script started it in the background (SIGINT inherited ignored: it used to run on). Started, it
    removes the bodies an nginx stopped mid-upload left in its body folder (nothing else would)."""
    left = front_body_dir(tmp_path / "data") / "0000000001"
    left.parent.mkdir(parents=True)
    left.write_bytes(b"half an upload")
    deployment = Deployment(write_tiny_bundle(tmp_path / "bundle"), tmp_path / "data",
                            {"FEDURL_GZIP_CACHE_BYTES": "0"}, background=background)
    nginx = deployment.nginx_pid()
    assert request(deployment.port, "GET", "/api/model")[0] == 200
    assert not left.exists()
    assert deployment.stop(signal.SIGINT) == 0
    for _ in range(100):  # nginx's graceful stop is quick when idle: 10 s at most
        try:
            os.kill(nginx, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("nginx still runs after fedurl-deploy stopped")


def test_several_workers_on_postgresql_serve_a_round_and_one_killed_comes_back(tmp_path, postgresql_url):
    """The documented start with --workers 3 on PostgreSQL: a round's uploads go through nginx to
    three app processes; one SIGKILLed mid-round is started again, and the round closes into the
    exact weighted mean of all six uploads."""
    # Prepare
    bundle = write_tiny_bundle(tmp_path / "bundle")
    env = {"FEDURL_SELECTION": "open", "FEDURL_IDENTITY": "", "FEDURL_MIN_CLIENTS": "6",
           "FEDURL_INFLUENCE": "none", "FEDURL_GZIP_CACHE_BYTES": "0", "FEDURL_AGGREGATION": "plain"}
    deployment = Deployment(bundle, tmp_path / "data", env, ("--workers", "3", "--db", postgresql_url))
    rng = np.random.default_rng(5)
    deltas = [{n: rng.normal(scale=0.01, size=s).astype(np.float32) for n, s in TINY_PARAMETERS.items()}
              for _ in range(6)]
    try:
        # "listening" means every worker accepts, but a worker's own line may reach the log after it;
        # the first worker (app_url) runs inside fedurl-deploy and logs none: two lines for three
        assert deployment.wait_for_count("worker_listening", 2, 20)
        started = [e for e in deployment.log if e.get("event") == "worker_listening"]
        url = f"http://{CLIENT}:{deployment.port}"
        clients = [FederatedClient(url) for _ in deltas]
        tickets = [client.ticket() for client in clients]
        for i in range(3):
            clients[i].upload(deltas[i], tickets[i], 10 + i, 5.0, 4.0)
        # Execute
        os.kill(started[0]["pid"], signal.SIGKILL)
        assert deployment.wait_for("worker_exited", 20)
        # the restarted worker replays the round's 3 bodies, then listens again
        assert deployment.wait_for_count("worker_listening", 3, 60)
        for i in range(3, 6):
            clients[i].upload(deltas[i], tickets[i], 10 + i, 5.0, 4.0)
        version = FederatedClient(url).fetch_model()["version"]
    finally:
        code = deployment.stop()
    # Assert
    assert len(started) == 2 and len(deployment.events["listening"]["workers"]) == 3
    assert deployment.events["worker_exited"]["pid"] == started[0]["pid"]
    assert sum(e.get("event") == "worker_listening" for e in deployment.log) == 3, "the worker came back"
    assert version == 2 and code == 0
    v1 = load_bundle(bundle).load_weights()
    v2 = load_bundle(tmp_path / "data" / "versions" / "2").load_weights()
    weights = [10 + i for i in range(6)]
    for name in TINY_PARAMETERS:
        pairs = zip(weights, deltas, strict=True)
        mean = sum(w * d[name].astype(np.float64) for w, d in pairs) / sum(weights)
        np.testing.assert_allclose(v2[name], v1[name] + mean, rtol=1e-5, atol=1e-7)


def test_several_workers_on_sqlite_are_refused(tmp_path):
    """SQLite has one process: --workers 2 without PostgreSQL stops the start with a reason."""
    command = [sys.executable, "-m", "deploy.front", "--bundle", str(write_tiny_bundle(tmp_path / "b")),
               "--data-dir", str(tmp_path / "data"), "--port", "0", "--workers", "2"]
    environ = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=REPO, env=environ, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "needs PostgreSQL" in result.stderr
