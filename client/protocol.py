"""A Python client of the update protocol (docs/PROTOCOL.md), stdlib + numpy only.

Talks to a server URL over urllib, or to a Flask test client in-process, with the same calls:
``enroll()``, ``check_in()``, ``fetch_model()``, ``save_bundle(dir)``, ``global_weights()``,
``ticket()``, ``upload(delta, ...)``; a member of a secure cohort runs its round with
``SecureParticipant`` (``privacy.secagg``) instead of uploading.
The integration tests and the simulated clients use it; the browser implements the same protocol.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from formats import durable
from formats import tensors as tensor_codec
from formats import update as update_codec
from formats.bundle import MANIFEST
from formats.pow import solve
from privacy.messages import RoundConfig
from privacy.secagg import SecAggClient


class ProtocolError(Exception):
    """The server refused a request: HTTP status, stable error code, and its message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class _UrllibTransport:
    """HTTP to a running server."""

    def __init__(self, base_url: str, timeout: float):
        self.base_url, self.timeout = base_url.rstrip("/"), timeout

    def request(self, method: str, path: str, body: bytes | None, headers: dict) -> tuple[int, dict, bytes]:
        """Send one request; return (status, lower-cased headers, body) for any status."""
        req = urllib.request.Request(self.base_url + path, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as response:
                return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


class _FlaskTransport:
    """The same requests through a Flask test client."""

    def __init__(self, test_client):
        self.test_client = test_client

    def request(self, method: str, path: str, body: bytes | None, headers: dict) -> tuple[int, dict, bytes]:
        """Send one request; return (status, lower-cased headers, body)."""
        response = self.test_client.open(path, method=method, data=body, headers=headers)
        data = response.get_data()
        response.close()  # file responses hold an open file until closed
        return response.status_code, {k.lower(): v for k, v in response.headers.items()}, data


def random_client_id() -> str:
    """A fresh opaque client id (no user information in it)."""
    return secrets.token_urlsafe(16)


def encode_update(delta: dict[str, np.ndarray], ticket: dict, client_id: str, num_examples: int,
                  loss_before: float, loss_after: float, dtype=np.float32,
                  rng: np.random.Generator | None = None) -> bytes:
    """The update body for a ticket (formats.update's codec, fed from a ticket's JSON); dtype
    np.float32, np.float16 or formats.update.Q8 (rng: its rounding's randomness, default the OS's).
    """
    meta = update_codec.UpdateMeta(ticket=ticket["ticket"], client_id=client_id,
                                   base_version=int(ticket["version"]), num_examples=int(num_examples),
                                   loss_before=float(loss_before), loss_after=float(loss_after))
    return update_codec.encode_update(delta, meta, dtype, rng)


class FederatedClient:
    """One federated client: its id, and the model it last fetched."""

    def __init__(self, server, client_id: str | None = None, timeout: float = 60.0):
        """:param server: a base URL ("http://127.0.0.1:5000") or a Flask test client."""
        self.transport = (_UrllibTransport(server, timeout) if isinstance(server, str)
                          else _FlaskTransport(server))
        self.client_id = client_id or random_client_id()
        self.model: dict | None = None
        self._etag: str | None = None

    def _call(self, method: str, path: str, body=None, headers=None, ok=(200,)) -> tuple[int, dict, bytes]:
        """One request; raise ProtocolError unless the status is in ok."""
        status, response_headers, data = self.transport.request(method, path, body, headers or {})
        if status not in ok:
            try:
                error = json.loads(data)
                raise ProtocolError(status, error["error"], error["message"])
            except (ValueError, KeyError, TypeError):
                raise ProtocolError(status, "http_error", data[:200].decode("utf-8", "replace")) from None
        return status, response_headers, data

    def fetch_model(self) -> dict:
        """GET /api/model (revalidated by ETag); return {version, round, manifest, files}."""
        headers = {"If-None-Match": self._etag} if self._etag and self.model else {}
        status, response_headers, data = self._call("GET", "/api/model", headers=headers, ok=(200, 304))
        if status == 200:
            self.model, self._etag = json.loads(data), response_headers.get("etag")
        assert self.model is not None, "a 304 answers only a request that sent the ETag of a fetched model"
        return self.model

    def download(self, name: str) -> bytes:
        """One file of the fetched model, checked against the manifest's sha256."""
        model = self.model or self.fetch_model()
        _, _, data = self._call("GET", model["files"][name])
        expected = model["manifest"]["files"][name]["sha256"]
        if hashlib.sha256(data).hexdigest() != expected:
            raise ProtocolError(200, "corrupt_download", f"{name} does not match its sha256 {expected[:12]}…")
        return data

    def global_weights(self) -> dict[str, np.ndarray]:
        """The fetched version's weights."""
        return tensor_codec.decode(self.download("weights.safetensors"))[0]

    def save_bundle(self, directory) -> Path:
        """Write the fetched model as a bundle directory (e.g. for runtime.trainer.LocalTrainer)."""
        model = self.model or self.fetch_model()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in model["manifest"]["files"]:
            (directory / name).write_bytes(self.download(name))
        durable.write_json(directory / MANIFEST, model["manifest"])
        return directory

    def _post_json(self, path: str, body: dict, ok=(200, 201)) -> dict:
        """POST a JSON object; the JSON answer."""
        data = json.dumps(body).encode()
        return json.loads(self._call("POST", path, data, {"Content-Type": "application/json"}, ok=ok)[2])

    def enroll(self, token: str | None = None) -> dict:
        """GET /api/puzzle, solve it if asked, POST /api/enrollments (once per client id)."""
        challenge = json.loads(self._call("GET", "/api/puzzle")[2])
        body: dict = {"client_id": self.client_id}
        if "pow" in challenge["requires"]:
            body.update(puzzle=challenge["puzzle"],
                        counter=solve(challenge["puzzle"], challenge["difficulty"]))
        if token is not None:
            body["token"] = token
        return self._post_json("/api/enrollments", body)

    def check_in(self) -> dict:
        """POST /api/checkins: {round, version, phase, state, retry_after_s, deadline}."""
        return self._post_json("/api/checkins", {"client_id": self.client_id}, ok=(200,))

    def ticket(self, base_version: int | None = None) -> dict:
        """POST /api/tickets: {ticket, version, round, expires_at}; for the current version, or for
        base_version, the one an update that waited was trained on (within the server's staleness).
        """
        request: dict[str, str | int] = {"client_id": self.client_id}
        if base_version is not None:
            request["base_version"] = base_version
        body = json.dumps(request).encode()
        _, _, data = self._call("POST", "/api/tickets", body, {"Content-Type": "application/json"}, ok=(201,))
        return json.loads(data)

    def upload(self, delta: dict[str, np.ndarray], ticket: dict, num_examples: int, loss_before: float,
               loss_after: float, dtype=np.float32) -> dict:
        """POST /api/updates with delta = new - global for every parameter; 202's JSON body."""
        body = encode_update(delta, ticket, self.client_id, num_examples, loss_before, loss_after, dtype)
        return self.post_update(body)

    def post_update(self, body: bytes, content_type: str = "application/octet-stream") -> dict:
        """POST raw update bytes (tests use it to send malformed ones)."""
        _, _, data = self._call("POST", "/api/updates", body, {"Content-Type": content_type}, ok=(202,))
        return json.loads(data)

    def status(self) -> dict:
        """GET /api/status."""
        return json.loads(self._call("GET", "/api/status")[2])

    def _bearer(self, ticket: dict, extra: dict | None = None) -> dict:
        """Headers that authenticate a secure-round request with the member's round ticket."""
        return {"Authorization": f"Bearer {ticket['ticket']}", **(extra or {})}

    def secure_state(self, ticket: dict) -> dict:
        """GET /api/secure: {round, phase, index, cohort_size, deadline} of the ticket's secure round."""
        return json.loads(self._call("GET", "/api/secure", headers=self._bearer(ticket))[2])

    def secure_fetch(self, ticket: dict, what: str) -> bytes:
        """GET /api/secure/<what>: config, roster, shares (this member's) or unmask, as message bytes."""
        return self._call("GET", f"/api/secure/{what}", headers=self._bearer(ticket))[2]

    def secure_send(self, ticket: dict, kind: str, message: bytes) -> dict:
        """POST /api/secure/<kind> (advertise, shares, masked, unmask): 202's JSON body."""
        headers = self._bearer(ticket, {"Content-Type": "application/octet-stream"})
        return json.loads(self._call("POST", f"/api/secure/{kind}", message, headers, ok=(202,))[2])


def flatten(delta: dict[str, np.ndarray], parameters: list[dict]) -> np.ndarray:
    """The delta as one float64 vector in manifest order (what a secure round masks)."""
    return np.concatenate([np.asarray(delta[p["name"]], dtype=np.float64).ravel() for p in parameters])


class SecureParticipant:
    """One cohort member's secure round over HTTP, a phase at a time (docs/PROTOCOL.md, Secure rounds).

    Call ``step(phase)`` for each of ``PHASES`` once the server's round is in that phase (all
    members of a lockstep driver, as the simulation does; or poll ``state()``). The delta is
    clipped, quantized and masked on this side: the server never receives it in clear.
    """

    PHASES = ("advertise", "share_keys", "masked_input", "unmask")

    def __init__(self, fed: FederatedClient, ticket: dict, delta: np.ndarray,
                 rng: np.random.Generator | None = None):
        """:param delta: the flattened delta (``flatten``) this member contributes."""
        self.fed, self.ticket, self.delta = fed, ticket, delta
        self.index = fed.secure_state(ticket)["index"]
        config = RoundConfig.decode(fed.secure_fetch(ticket, "config"))
        self.machine = SecAggClient(config, self.index, rng)
        self.sent: dict[str, int] = {}  # bytes of the message sent in each phase
        self.fetched: dict[str, int] = {"advertise": len(config.encode())}  # bytes downloaded for it

    def state(self) -> dict:
        """The round's state as the server sees it (phase, deadline...)."""
        return self.fed.secure_state(self.ticket)

    def step(self, phase: str) -> dict:
        """Do this member's part of phase; the server's 202 answer."""
        machine = self.machine
        if phase == "advertise":
            return self._send(phase, "advertise", machine.advertise())
        if phase == "share_keys":
            return self._send(phase, "shares", machine.share_keys(self._fetch(phase, "roster")))
        if phase == "masked_input":
            return self._send(phase, "masked", machine.masked_input(self._fetch(phase, "shares"), self.delta))
        if phase == "unmask":
            return self._send(phase, "unmask", machine.unmask(self._fetch(phase, "unmask")))
        raise ValueError(f"unknown phase {phase!r}; one of {', '.join(self.PHASES)}")

    def run(self, poll_s: float = 1.0, timeout_s: float = 600.0) -> None:
        """Take every phase as the server opens it, polling ``GET /api/secure`` (a member that runs
        alongside others, e.g. beside browsers).

        :raise ProtocolError: the round ended (``round_closed``) or moved past a phase without us.
        """
        give_up = time.monotonic() + timeout_s
        for phase in self.PHASES:
            while (now := self.state()["phase"]) != phase:
                if now in self.PHASES and self.PHASES.index(now) > self.PHASES.index(phase):
                    raise ProtocolError(409, "wrong_phase", f"the round moved past {phase} without us")
                if time.monotonic() > give_up:
                    raise ProtocolError(408, "timeout", f"phase {phase} did not open within {timeout_s} s")
                time.sleep(poll_s)
            self.step(phase)

    def _fetch(self, phase: str, what: str) -> bytes:
        """Download what the phase needs, counting its bytes."""
        data = self.fed.secure_fetch(self.ticket, what)
        self.fetched[phase] = len(data)
        return data

    def _send(self, phase: str, kind: str, message: bytes) -> dict:
        """Send the phase's message, counting its bytes."""
        self.sent[phase] = len(message)
        return self.fed.secure_send(self.ticket, kind, message)
