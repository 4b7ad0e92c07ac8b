"""Every kind of bad input gets a 4xx JSON error with a stable code and changes nothing.

Each case prepares what it needs (tickets, closed rounds), takes a snapshot of all server state,
sends one bad request through the real HTTP API, and checks the status, the error code, a piece
of the message, that the snapshot is unchanged, and (for protocol routes) that the refusal was
counted under its code. Most go through Flask's test client; what only the HTTP server sees
(``Transfer-Encoding``) goes through fedurl-serve's waitress server on a loopback port.

Safetensors headers that make the decoder itself raise (nesting, huge numbers, a list for a
dtype) are refused by server/validation.py whatever formats/tensors.py does with them.
"""

from __future__ import annotations

import gzip
import json
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from client.protocol import FederatedClient
from formats import tensors as tensor_codec
from formats.update import quantise
from server.app import create_app
from server.cli import serving
from server.rounds import SPENDS_TICKET
from server.validation import as_float32
from tests.server.conftest import ADMIN_TOKEN, TINY_PARAMETERS, rejected, small_delta, snapshot

SPENT = {refusal.code for refusal in SPENDS_TICKET}


class Ctx:
    """One fresh server and a client holding a valid ticket."""

    def __init__(self, app):
        self.app, self.client = app, app.test_client()
        self.fed = FederatedClient(self.client, client_id="client-under-test")
        self.ticket = self.fed.ticket()

    def metadata(self, **overrides) -> dict:
        """Valid update metadata with overrides (None removes a field)."""
        meta = {"ticket": self.ticket["ticket"], "client_id": self.fed.client_id,
                "base_version": str(self.ticket["version"]), "num_examples": "10",
                "loss_before": "5.0", "loss_after": "4.0", **overrides}
        return {k: v for k, v in meta.items() if v is not None}

    def body(self, delta=None, **overrides) -> bytes:
        """A safetensors update body: delta (default: a valid small one) and metadata overrides."""
        return tensor_codec.encode(small_delta() if delta is None else delta, self.metadata(**overrides))

    def post(self, body: bytes, content_type="application/octet-stream", path="/api/updates"):
        """POST bytes."""
        headers = {"Content-Type": content_type} if content_type else {}
        return self.client.post(path, data=body, headers=headers)

    def close_round(self) -> None:
        """Let three other clients close the open round."""
        for i in range(3):
            other = FederatedClient(self.client, client_id=f"other-client-{time.monotonic_ns()}-{i}")
            other.upload(small_delta(0.01), other.ticket(), 5, 3.0, 2.0)


def raw(header, data: bytes = b"") -> bytes:
    """Hand-made safetensors bytes from a header (dict or raw bytes) and a data section."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + data


def tiny_header(meta: dict, **changes) -> dict:
    """A header describing the tiny model as F32, with changed entries."""
    header, offset = {"__metadata__": meta}, 0
    for name, shape in TINY_PARAMETERS.items():
        size = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header.update(changes)
    return header


TINY_BYTES = 4 * sum(int(np.prod(s)) for s in TINY_PARAMETERS.values())


def with_value(value) -> dict:
    """A delta whose first element is value."""
    delta = small_delta()
    delta["embed.weight"][0, 0] = value
    return delta


def q8_delta(changes: dict | None = None, drop: str = "") -> dict:
    """The valid small delta as Q8 tensors (int8 values and their '#scale'), entries changed or dropped."""
    tensors = {}
    for name, array in small_delta().items():
        tensors[name], tensors[name + "#scale"] = quantise(array, np.random.default_rng(0))
    return {name: array for name, array in {**tensors, **(changes or {})}.items() if name != drop}


def scale(value: float, blocks: int = 1) -> dict:
    """head.bias's Q8 scales all set to value."""
    return {"head.bias#scale": np.full(blocks, value, np.float32)}


class RawResponse:
    """The status and body of a response read off a socket, shaped like a test client's."""

    def __init__(self, status_code: int, body: bytes):
        self.status_code, self.body = status_code, body

    def get_data(self, as_text: bool = False):
        return self.body.decode() if as_text else self.body

    def get_json(self):
        return json.loads(self.body)


def over_http(ctx: Ctx, head: bytes, body: bytes = b"") -> RawResponse:
    """Send head (request line and headers, without the blank line) and body to fedurl-serve's
    waitress server running ctx.app; return the whole response once the server closes."""
    with serving(ctx.app) as address, socket.create_connection(address, timeout=10) as sock:
        sock.sendall(head + b"\r\nConnection: close\r\n\r\n" + body)
        answer, deadline = b"", time.monotonic() + 10
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return RawResponse(int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2])


def admin_post(ctx: Ctx, path: str, body: bytes):
    """POST a JSON body to an admin route with the admin token."""
    return ctx.client.post(path, data=body, headers={"Content-Type": "application/json",
                                                     "Authorization": f"Bearer {ADMIN_TOKEN}"})


def post_json(ctx: Ctx, path: str, body: bytes):
    """POST bytes as application/json."""
    return ctx.post(body, "application/json", path)


def head(path: str, *headers: bytes) -> bytes:
    """A POST request line and headers for over_http."""
    return b"\r\n".join([f"POST {path} HTTP/1.1".encode(), b"Host: x", *headers])


def expire(ctx: Ctx) -> None:
    """Move the server clock past the ticket's expiry."""
    ctx.app.extensions["fedurl.coordinator"].clock = lambda: time.time() + 10 ** 6


def use_ticket(ctx: Ctx) -> None:
    """Upload once with the ticket, so it is used."""
    assert ctx.post(ctx.body()).status_code == 202


def second_ticket(ctx: Ctx) -> None:
    """Upload once, then take a second ticket for the same round."""
    use_ticket(ctx)
    ctx.ticket = ctx.fed.ticket()


def two_rounds_later(ctx: Ctx) -> None:
    """Two versions go by after the ticket was issued."""
    ctx.close_round()
    ctx.close_round()


@dataclass
class Case:
    """One bad request: what to prepare, what to send, and the refusal expected."""

    id: str
    status: int
    code: str
    message: str
    send: Callable
    prepare: Callable | None = None
    config: dict | None = None
    counted: bool = True


U = "/api/updates"
T = "/api/tickets"
BIG_BODIES = {"MAX_UPDATE_BYTES": 1_000_000}  # the real model's limit is about 2 MB; the tiny one's 65 KB
HUGE_INT = b"9" * 200_000
CASES = [
    Case("json_content_type", 415, "bad_content_type", "application/octet-stream",
         lambda c: c.post(c.body(), "application/json")),
    Case("text_content_type", 415, "bad_content_type", "octet-stream",
         lambda c: c.post(c.body(), "text/plain")),
    Case("no_content_type", 415, "bad_content_type", "octet-stream", lambda c: c.post(c.body(), None)),
    Case("body_too_large", 413, "payload_too_large", "byte limit",
         lambda c: c.post(b"\0" * (TINY_BYTES + 70_000))),
    Case("empty_body", 400, "malformed_payload", "shorter than", lambda c: c.post(b"")),
    Case("seven_bytes", 400, "malformed_payload", "shorter than", lambda c: c.post(b"1234567")),
    Case("header_length_past_end", 400, "malformed_payload", "does not fit",
         lambda c: c.post(struct.pack("<Q", 10 ** 6) + b"{}")),
    Case("header_not_json", 400, "malformed_payload", "not UTF-8 JSON", lambda c: c.post(raw(b"{nope", b""))),
    Case("header_is_a_list", 400, "malformed_payload", "JSON object", lambda c: c.post(raw(b"[1, 2]"))),
    Case("trailing_bytes", 400, "malformed_payload", "trailing bytes",
         lambda c: c.post(raw(tiny_header(c.metadata()), b"\0" * (TINY_BYTES + 8)))),
    Case("overlapping_offsets", 400, "malformed_payload", "overlaps",
         lambda c: c.post(raw(tiny_header(c.metadata(), **{"head.bias": {
             "dtype": "F32", "shape": [5], "data_offsets": [0, 20]}}), b"\0" * TINY_BYTES))),
    Case("metadata_not_strings", 400, "malformed_payload", "__metadata__",
         lambda c: c.post(raw(tiny_header({**c.metadata(), "num_examples": 10}), b"\0" * TINY_BYTES))),
    Case("int32_delta", 400, "bad_dtype", "F32, F16, Q8",
         lambda c: c.post(c.body({n: np.zeros(s, np.int32) for n, s in TINY_PARAMETERS.items()}))),
    Case("int64_delta", 400, "bad_dtype", "F32, F16, Q8",
         lambda c: c.post(c.body({n: np.zeros(s, np.int64) for n, s in TINY_PARAMETERS.items()}))),
    Case("no_ticket_field", 400, "missing_metadata", "ticket", lambda c: c.post(c.body(ticket=None))),
    Case("no_loss_fields", 400, "missing_metadata", "loss_before, loss_after",
         lambda c: c.post(c.body(loss_before=None, loss_after=None))),
    Case("unknown_metadata_key", 400, "bad_metadata", "unknown __metadata__ keys",
         lambda c: c.post(c.body(epochs="3"))),
    Case("base_version_not_int", 400, "bad_metadata", "base_version",
         lambda c: c.post(c.body(base_version="v1"))),
    # Python's json (the ticket lookup reads the header alone) takes an escaped lone surrogate,
    # which the ticket's hash could not encode: a 500 before tickets were checked in the codec
    Case("ticket_lone_surrogate", 400, "bad_metadata", "ticket must be 1-128",
         lambda c: c.post(c.body(ticket="\ud800"))),
    Case("client_id_too_short", 400, "bad_client_id", "8-64", lambda c: c.post(c.body(client_id="abc"))),
    Case("client_id_with_slash", 400, "bad_client_id", "8-64",
         lambda c: c.post(c.body(client_id="../../etc/passwd"))),
    Case("zero_examples", 400, "bad_num_examples", "from 1 to 1000",
         lambda c: c.post(c.body(num_examples="0"))),
    Case("negative_examples", 400, "bad_num_examples", "-5", lambda c: c.post(c.body(num_examples="-5"))),
    Case("absurd_examples", 400, "bad_num_examples", "1000000000",
         lambda c: c.post(c.body(num_examples="1000000000"))),
    Case("fractional_examples", 400, "bad_num_examples", "3.5", lambda c: c.post(c.body(num_examples="3.5"))),
    Case("nan_loss", 400, "bad_loss", "loss_before", lambda c: c.post(c.body(loss_before="nan"))),
    Case("negative_loss", 400, "bad_loss", "loss_after", lambda c: c.post(c.body(loss_after="-1"))),
    Case("missing_parameter", 400, "missing_parameter", "head.bias",
         lambda c: c.post(c.body({"embed.weight": np.zeros((4, 3), np.float32)}))),
    Case("unknown_parameter", 400, "unknown_parameter", "lm.extra",
         lambda c: c.post(c.body({**small_delta(), "lm.extra": np.zeros(2, np.float32)}))),
    Case("wrong_shape", 400, "shape_mismatch", "[4, 3]",
         lambda c: c.post(c.body({**small_delta(), "embed.weight": np.zeros((4, 4), np.float32)}))),
    Case("transposed", 400, "shape_mismatch", "[3, 4]",
         lambda c: c.post(c.body({**small_delta(), "embed.weight": np.zeros((3, 4), np.float32)}))),
    Case("nan_delta", 400, "non_finite", "embed.weight", lambda c: c.post(c.body(with_value(np.nan)))),
    Case("inf_delta", 400, "non_finite", "NaN or infinite", lambda c: c.post(c.body(with_value(np.inf)))),
    Case("f16_overflow_inf", 400, "non_finite", "NaN or infinite",
         lambda c: c.post(c.body({n: a.astype(np.float16) for n, a in with_value(-np.inf).items()}))),
    Case("norm_too_large", 400, "norm_too_large", "exceeds the limit 10",
         lambda c: c.post(c.body(with_value(11.0)))),
    Case("squares_overflow", 400, "norm_too_large", "L2 norm inf",
         lambda c: c.post(c.body(with_value(1e30)))),  # finite, but its square is not: no non_finite
    # Q8 bodies (int8 values, one float32 scale per 64 of them): the scales are checked like deltas
    Case("q8_missing_scale", 400, "missing_scale", "'head.bias#scale'",
         lambda c: c.post(c.body(q8_delta(drop="head.bias#scale")))),
    Case("q8_scale_wrong_shape", 400, "bad_scale", "shape [1]",
         lambda c: c.post(c.body(q8_delta(scale(1.0, 2))))),
    Case("q8_scale_float16", 400, "bad_scale", "must be F32",
         lambda c: c.post(c.body(q8_delta({"head.bias#scale": np.ones(1, np.float16)})))),
    Case("q8_nan_scale", 400, "non_finite", "'head.bias#scale'",
         lambda c: c.post(c.body(q8_delta(scale(np.nan))))),
    Case("q8_inf_scale", 400, "non_finite", "NaN or infinite",
         lambda c: c.post(c.body(q8_delta(scale(np.inf))))),
    Case("q8_negative_scale", 400, "bad_scale", "negative",
         lambda c: c.post(c.body(q8_delta(scale(-0.01))))),
    Case("q8_huge_scale", 400, "norm_too_large", "exceeds the limit 10",
         lambda c: c.post(c.body(q8_delta(scale(1e6))))),
    Case("q8_scale_overflows_float32", 400, "non_finite", "'head.bias'",  # 127 x 3e38 is inf in float32
         lambda c: c.post(c.body(q8_delta(scale(3e38))))),
    Case("q8_scale_of_unknown_parameter", 400, "unknown_parameter", "'lm.extra'",
         lambda c: c.post(c.body(q8_delta({"lm.extra#scale": np.ones(1, np.float32)})))),
    Case("q8_scale_of_f32_delta", 400, "bad_scale", "not I8",
         lambda c: c.post(c.body({**small_delta(), "head.bias#scale": np.ones(1, np.float32)}))),
    Case("q8_mixed_with_f32", 400, "bad_dtype", "F32 and I8 in one body",
         lambda c: c.post(c.body(q8_delta({"embed.weight": np.zeros((4, 3), np.float32)},
                                          drop="embed.weight#scale")))),
    Case("q8_wrong_shape", 400, "shape_mismatch", "[4, 3]",
         lambda c: c.post(c.body(q8_delta({"embed.weight": np.zeros((3, 4), np.int8)})))),
    Case("unknown_version", 400, "unknown_version", "base_version 99",
         lambda c: c.post(c.body(base_version="99"))),
    Case("stale_version", 409, "stale_version", "too old",
         lambda c: c.post(c.body()), prepare=two_rounds_later),
    Case("unknown_ticket", 403, "ticket_invalid", "unknown ticket",
         lambda c: c.post(c.body(ticket="forged-ticket"))),
    Case("other_clients_ticket", 403, "ticket_mismatch", "another client_id",
         lambda c: c.post(c.body(client_id="someone-else-entirely"))),
    Case("reused_ticket", 409, "ticket_reused", "already used",
         lambda c: c.post(c.body()), prepare=use_ticket),
    Case("expired_ticket", 403, "ticket_expired", "expired at", lambda c: c.post(c.body()), prepare=expire),
    Case("ticket_for_other_version", 409, "version_mismatch", "ticket is for version 1",
         lambda c: c.post(c.body(base_version="2")), prepare=lambda c: c.close_round()),
    Case("second_update_same_round", 409, "duplicate_client", "already sent an update",
         lambda c: c.post(c.body()), prepare=second_ticket),
    Case("update_flood", 429, "rate_limited", "too many requests", lambda c: c.post(c.body()),
         prepare=lambda c: [c.post(b"") for _ in range(3)], config={"REQUESTS_PER_ADDR_PER_MIN": 4}),
    Case("ticket_bad_client_id", 400, "bad_client_id", "8-64",
         lambda c: c.client.post("/api/tickets", json={"client_id": "no spaces allowed"})),
    Case("ticket_missing_client_id", 400, "bad_client_id", "8-64",
         lambda c: c.client.post("/api/tickets", json={})),
    Case("ticket_form_encoded", 415, "bad_content_type", "application/json",
         lambda c: c.client.post("/api/tickets", data={"client_id": "client-under-test"})),
    Case("ticket_malformed_json", 400, "malformed_json", "JSON object",
         lambda c: c.post(b'{"client_id": ', "application/json", "/api/tickets")),
    Case("ticket_flood", 429, "rate_limited", "from this client",
         lambda c: c.client.post("/api/tickets", json={"client_id": c.fed.client_id}),
         config={"TICKETS_PER_CLIENT_PER_MIN": 1}),
    Case("unknown_file", 404, "not_found", "no file with sha256",
         lambda c: c.client.get("/api/files/" + "0" * 64), counted=False),
    Case("file_path_traversal", 404, "not_found", "not found",
         lambda c: c.client.get("/api/files/..%2fmanifest.json"),
         counted=False),
    Case("get_updates", 405, "method_not_allowed", "method", lambda c: c.client.get(U), counted=False),
    # Issue H, item 7: inputs that answered 500 (or 501)
    Case("ticket_deeply_nested_json", 400, "malformed_json", "JSON object",
         lambda c: post_json(c, T, b"[" * 30_000 + b"]" * 30_000)),
    Case("ticket_deeply_nested_object", 400, "malformed_json", "JSON object",
         lambda c: post_json(c, T, b'{"a": ' * 5_000 + b"1" + b"}" * 5_000)),
    Case("ticket_200000_digit_integer", 400, "malformed_json", "JSON object",
         lambda c: post_json(c, T, b'{"client_id": "client-under-test", "n": ' + HUGE_INT + b"}"),
         config=BIG_BODIES),
    Case("ticket_float_overflow", 400, "malformed_json", "JSON object",
         lambda c: post_json(c, T, b'{"client_id": "client-under-test", "n": 1e999}')),
    Case("admin_rollback_deeply_nested", 400, "bad_request", "version",
         lambda c: admin_post(c, "/api/admin/rollback", b"[" * 30_000 + b"]" * 30_000), counted=False),
    Case("admin_rollback_200000_digit_version", 400, "bad_request", "version",
         lambda c: admin_post(c, "/api/admin/rollback", b'{"version": ' + HUGE_INT + b"}"),
         config=BIG_BODIES, counted=False),
    Case("static_path_10000_chars", 404, "not_found", "no file",
         lambda c: c.client.get("/static/" + "a" * 10_000), counted=False),
    Case("ort_path_10000_chars", 404, "not_found", "no file",
         lambda c: c.client.get("/ort/" + "b" * 10_000), counted=False),
    Case("static_path_with_nul", 404, "not_found", "no file",
         lambda c: c.client.get("/static/main.js%00"), counted=False),
    Case("ticket_transfer_encoding_gzip", 400, "bad_request", "Transfer-Encoding",
         lambda c: over_http(c, head(T, b"Content-Type: application/json", b"Transfer-Encoding: gzip"),
                             gzip.compress(b'{"client_id": "client-under-test"}')), counted=False),
    Case("update_transfer_encoding_gzip_chunked", 400, "bad_request", "Transfer-Encoding",
         lambda c: over_http(c, head(U, b"Content-Type: application/octet-stream",
                                     b"Transfer-Encoding: gzip, chunked"), b"5\r\nhello\r\n0\r\n\r\n"),
         counted=False),
    Case("content_length_not_a_number_over_http", 400, "bad_request", "Content-Length",
         lambda c: over_http(c, head(U, b"Content-Length: nope")), counted=False),
    Case("body_far_too_large_over_http", 413, "payload_too_large", "limit",
         lambda c: over_http(c, head(U, b"Content-Type: application/octet-stream",
                                     b"Content-Length: 10000000")), counted=False),
    # Safetensors headers the decoder (formats/tensors.py) trips on: refused by validation.decode_payload
    Case("header_deeply_nested", 400, "malformed_payload", "valid safetensors payload",
         lambda c: c.post(raw(b'{"x": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"))),
    Case("header_dtype_is_a_list", 400, "malformed_payload", "valid safetensors payload",
         lambda c: c.post(raw(tiny_header(c.metadata(), **{"head.bias": {
             "dtype": ["F32"], "shape": [5], "data_offsets": [48, 68]}}), b"\0" * TINY_BYTES))),
    Case("header_shape_product_overflows_int64", 400, "malformed_payload", "valid safetensors payload",
         lambda c: c.post(raw(tiny_header(c.metadata(), **{"head.bias": {
             "dtype": "F32", "shape": [2 ** 32, 2 ** 32, 4], "data_offsets": [48, 68]}}),
             b"\0" * TINY_BYTES))),
    Case("header_200000_digit_offset", 400, "malformed_payload", "valid safetensors payload",
         lambda c: c.post(raw(b'{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, '
                              + HUGE_INT + b"]}}")), config=BIG_BODIES),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_and_changes_nothing(case: Case, config):
    """The case's request is refused with its code and message; the server state is unchanged."""
    # Prepare
    ctx = Ctx(create_app({**config, **(case.config or {})}))
    if case.prepare:
        case.prepare(ctx)
    before, refusals = snapshot(ctx.app), rejected(ctx.app, case.code)
    # Execute
    response = case.send(ctx)
    # Assert
    assert response.status_code == case.status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"] == case.code
    assert case.message in body["message"]
    after = snapshot(ctx.app)
    if case.code in SPENT:  # the refusal spends the upload's ticket, and changes nothing else
        tickets_before, tickets_after = before["tables"].pop("tickets"), after["tables"].pop("tickets")
        assert len([row for row in tickets_after if row not in tickets_before]) == 1
    assert after == before
    assert rejected(ctx.app, case.code) == refusals + (1 if case.counted else 0)


def test_case_count():
    """The suite covers at least 25 distinct refusals (the issue's floor)."""
    assert len({c.id for c in CASES}) >= 25
    assert len({c.code for c in CASES}) >= 20


@pytest.mark.parametrize("encoding", ["F32", "Q8"])
def test_valid_body_from_the_same_helpers_is_accepted(config, encoding):
    """Positive control: the unmodified requests these cases start from are accepted."""
    ctx = Ctx(create_app(config))
    response = ctx.post(ctx.body(q8_delta() if encoding == "Q8" else None))
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["updates_in_round"] == 1


def test_float16_deltas_become_exactly_numpys_float32():
    """as_float32 converts float16 through its bits (numpy's cast is ten times slower on the
    subnormals a small delta is made of): every finite float16 comes out bit for bit as numpy's
    cast, and every infinity or NaN stays non-finite, so non_finite still refuses it."""
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).reshape(256, 256)
    got, want = as_float32(every), every.astype(np.float32)
    finite = np.isfinite(want)
    assert got.dtype == np.float32 and got.shape == (256, 256)
    assert np.array_equal(got[finite].view(np.uint32), want[finite].view(np.uint32))
    assert finite.sum() == 63488 and not np.isfinite(got[~finite]).any()
