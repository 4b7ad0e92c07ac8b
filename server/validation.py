"""Checks on what untrusted clients send, as functions of bytes and the manifest: no I/O.

An update is safetensors bytes (docs/FORMAT.md, docs/PROTOCOL.md) holding one delta tensor per
manifest parameter plus six string metadata fields. Every failure raises ``ApiError`` with a
stable code; nothing here touches the database or the running round.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import numpy as np

from formats import tensors as tensor_codec
from server.errors import ApiError

CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
METADATA_FIELDS = ("ticket", "client_id", "base_version", "num_examples", "loss_before", "loss_after")
DELTA_DTYPES = ("F32", "F16")
MAX_LOSS = 1000.0  # cross-entropy over a 512-piece vocabulary starts near ln 512 = 6.2
MAX_JSON_INT_DIGITS = 20  # any int64, sign included; Python's own limit (4300 digits) may be lifted


@dataclass(frozen=True)
class UpdateMeta:
    """The parsed metadata of one update."""

    ticket: str
    client_id: str
    base_version: int
    num_examples: int
    loss_before: float
    loss_after: float


def check_client_id(value: object) -> str:
    """Return value if it is an opaque client id (8-64 chars of [A-Za-z0-9_-]).

    :raise ApiError: bad_client_id otherwise.
    """
    if not isinstance(value, str) or not CLIENT_ID.fullmatch(value):
        raise ApiError("bad_client_id", "client_id must be 8-64 characters of A-Z, a-z, 0-9, '_' or '-'")
    return value


def _json_int(text: str) -> int:
    """A JSON integer of at most MAX_JSON_INT_DIGITS characters."""
    if len(text) > MAX_JSON_INT_DIGITS:
        raise ValueError(f"integer of {len(text)} digits")
    return int(text)


def _json_float(text: str) -> float:
    """A JSON number with a fraction or exponent that is a finite float."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]}... overflows a float")
    return value


def _json_constant(name: str) -> float:
    """NaN and Infinity are not JSON."""
    raise ValueError(f"{name} is not JSON")


def json_body(body: bytes) -> object | None:
    """The JSON value of a request body, or None if it is not strict JSON of a sane shape.

    None for: bytes that are not UTF-8 JSON, nesting deep enough to raise RecursionError (about
    1000 levels), integers longer than MAX_JSON_INT_DIGITS (whatever Python's int-to-str limit
    is), NaN, Infinity and numbers that overflow a float. Callers answer None with their own 400.
    """
    try:
        return json.loads(body, parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None


def decode_payload(body: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Parse safetensors bytes; only F32/F16 tensors are deltas.

    :raise ApiError: malformed_payload for broken bytes (whatever the decoder raises), bad_dtype
        for other dtypes.
    """
    try:
        tensors, metadata = tensor_codec.decode(body)
    except tensor_codec.WeightsFormatError as exc:
        raise ApiError("malformed_payload", f"body is not a valid safetensors payload: {exc}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # Whatever else the decoder trips on in untrusted bytes (a header nested thousands deep, a
        # 200,000-digit number, a list where a dtype string belongs) is still the client's fault.
        raise ApiError("malformed_payload", f"body is not a valid safetensors payload: "
                                            f"{type(exc).__name__} in its header") from None
    for name, array in tensors.items():
        if array.dtype not in (tensor_codec.DTYPES[d] for d in DELTA_DTYPES):
            raise ApiError("bad_dtype", f"tensor {name!r} is {array.dtype.name}; deltas must be F32 or F16")
    return tensors, metadata


def _int_field(metadata: dict, name: str, code: str, low: int, high: int) -> int:
    """A decimal integer metadata field within [low, high]."""
    raw = metadata[name]
    if not re.fullmatch(r"-?[0-9]{1,12}", raw) or not low <= int(raw) <= high:
        raise ApiError(code, f"{name} must be an integer from {low} to {high}, got {raw[:40]!r}")
    return int(raw)


def _loss_field(metadata: dict, name: str) -> float:
    """A finite, non-negative loss metadata field."""
    try:
        value = float(metadata[name])
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0.0 <= value <= MAX_LOSS):
        raise ApiError("bad_loss", f"{name} must be a finite number from 0 to {MAX_LOSS:g}, "
                                   f"got {metadata[name][:40]!r}")
    return value


def parse_metadata(metadata: dict[str, str], max_examples: int) -> UpdateMeta:
    """The six metadata fields, each checked; other keys are refused so both clients stay in step.

    :raise ApiError: missing_metadata, bad_metadata, bad_client_id, bad_num_examples, bad_loss.
    """
    missing = [f for f in METADATA_FIELDS if f not in metadata]
    if missing:
        raise ApiError("missing_metadata", f"__metadata__ lacks {', '.join(missing)}")
    unknown = sorted(set(metadata) - set(METADATA_FIELDS))
    if unknown:
        raise ApiError("bad_metadata", f"unknown __metadata__ keys {unknown[:5]}; "
                                       f"allowed: {', '.join(METADATA_FIELDS)}")
    return UpdateMeta(
        ticket=metadata["ticket"],
        client_id=check_client_id(metadata["client_id"]),
        base_version=_int_field(metadata, "base_version", "bad_metadata", 0, 2 ** 31 - 1),
        num_examples=_int_field(metadata, "num_examples", "bad_num_examples", 1, max_examples),
        loss_before=_loss_field(metadata, "loss_before"),
        loss_after=_loss_field(metadata, "loss_after"))


def check_delta(tensors: dict[str, np.ndarray], parameters: list[dict], max_norm: float
                ) -> tuple[dict[str, np.ndarray], float]:
    """Match tensors to the manifest's parameters; return float32 deltas and their global L2 norm.

    :raise ApiError: missing_parameter, unknown_parameter, shape_mismatch, non_finite, norm_too_large.
    """
    shapes = {p["name"]: tuple(p["shape"]) for p in parameters}
    missing, unknown = sorted(set(shapes) - set(tensors)), sorted(set(tensors) - set(shapes))
    if missing:
        raise ApiError("missing_parameter", f"delta lacks parameters {missing[:5]}")
    if unknown:
        raise ApiError("unknown_parameter", f"delta has parameters not in the model: {unknown[:5]}")
    delta, square_sum = {}, 0.0
    for name, shape in shapes.items():
        if tensors[name].shape != shape:
            raise ApiError("shape_mismatch", f"parameter {name!r} has shape {list(tensors[name].shape)}, "
                                             f"the model's is {list(shape)}")
        array = as_float32(tensors[name])
        if not np.isfinite(array).all():
            raise ApiError("non_finite", f"parameter {name!r} holds NaN or infinite values")
        flat = array.ravel()
        # float32 dot: a square overflowing to inf needs a norm far past any bound, and is refused
        square_sum += float(np.dot(flat, flat))
        delta[name] = array
    norm = math.sqrt(square_sum)
    if norm > max_norm:
        raise ApiError("norm_too_large", f"delta L2 norm {norm:.4g} exceeds the limit {max_norm:g}")
    return delta, norm


def as_float32(array: np.ndarray) -> np.ndarray:
    """A float32 view (F32) or copy (F16) of a decoded delta tensor."""
    return array.astype(np.float32, copy=False)
