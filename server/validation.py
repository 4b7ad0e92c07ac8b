"""Checks on what untrusted clients send, as functions of bytes and the manifest: no I/O.

The update body itself is decoded by ``formats.update`` (the one Python codec, shared with the
clients); here a decoded delta is matched to the model, and JSON request bodies are parsed
without ever raising. Every failure raises ``ApiError`` with a stable code; nothing here touches
the database or the running round.
"""

from __future__ import annotations

import json
import math
import mmap

import numpy as np

from formats import update as update_codec
from formats.update import Update, UpdateFormatError, UpdateMeta, decode_delta, decode_meta, decode_update
from server.errors import ApiError

MAX_JSON_INT_DIGITS = 20  # any int64, sign included; Python's own limit (4300 digits) may be lifted


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


def check_delta(tensors: dict[str, np.ndarray], parameters: list[dict], max_norm: float
                ) -> tuple[dict[str, np.ndarray], float]:
    """Match tensors to the manifest's parameters; return float32 deltas and their global L2 norm.

    tensors are a body's as ``formats.update.decode_delta`` checked them (Q8 scales paired).

    :raise ApiError: missing_parameter, unknown_parameter, shape_mismatch, non_finite, norm_too_large.
    """
    shapes = {p["name"]: tuple(p["shape"]) for p in parameters}
    names = set(update_codec.parameter_names(tensors))  # the codec checked their scales
    missing, unknown = sorted(set(shapes) - names), sorted(names - set(shapes))
    if missing:
        raise ApiError("missing_parameter", f"delta lacks parameters {missing[:5]}")
    if unknown:
        raise ApiError("unknown_parameter", f"delta has parameters not in the model: {unknown[:5]}")
    delta, square_sum = {}, 0.0
    for name, shape in shapes.items():
        if tensors[name].shape != shape:
            raise ApiError("shape_mismatch", f"parameter {name!r} has shape {list(tensors[name].shape)}, "
                                             f"the model's is {list(shape)}")
        array = float32_delta(tensors, name)
        flat = array.ravel()
        # float32 dot: a square overflowing to inf needs a norm far past any bound, and is refused
        with np.errstate(over="ignore", invalid="ignore"):
            square_sum += float(np.dot(flat, flat))
        delta[name] = array
    if not math.isfinite(square_sum):  # a NaN or an infinity, or finite values whose squares overflow
        for name, array in delta.items():
            if not np.isfinite(array).all():
                raise ApiError("non_finite", f"parameter {name!r} holds NaN or infinite values")
    norm = math.sqrt(square_sum)
    if norm > max_norm:
        raise ApiError("norm_too_large", f"delta L2 norm {norm:.4g} exceeds the limit {max_norm:g}")
    return delta, norm


def _float16_table() -> np.ndarray:
    """The float32 value of each of the 65,536 float16 bit patterns; infinite for inf and NaN.

    Built once through the bits (numpy's own cast takes a slow path for float16 subnormals):
    shifting the magnitude bits into float32 place and scaling by 2^112 is exact for every
    finite value, subnormals included.
    """
    bits = np.arange(1 << 16, dtype=np.uint32)
    table = (((bits & 0x7FFF) << 13) | ((bits & 0x8000) << 16)).view(np.float32) * np.float32(2.0 ** 112)
    table[(bits & 0x7C00) == 0x7C00] = np.inf  # float16's all-ones exponent
    return table


FLOAT16_TO_32 = _float16_table()


def as_float32(array: np.ndarray) -> np.ndarray:
    """A float32 view (F32) or exact copy (F16) of a decoded delta tensor.

    F16 is one lookup per element in a 256 KiB table (``FLOAT16_TO_32``): numpy's cast is ten
    times slower on the subnormals a 1e-4-scale delta is made of, and the bit arithmetic the
    table is built with costs 1.5x the lookup per upload and again at the close.
    """
    if array.dtype != np.float16:
        return array.astype(np.float32, copy=False)
    return np.take(FLOAT16_TO_32, array.view(np.uint16))


def float32_delta(tensors: dict[str, np.ndarray], name: str) -> np.ndarray:
    """Parameter ``name`` of a decoded body's tensors as float32, whatever its encoding: F32 as a
    view, F16 through ``as_float32``'s table, Q8 as int8 x its block scale (``dequantise``).
    Everything that reads a body back (the upload's checks, the close, recovery) goes through here.
    """
    array = tensors[name]
    if array.dtype == np.int8:
        return update_codec.dequantise(array, tensors[name + update_codec.SCALE_SUFFIX])
    return as_float32(array)


def float32_deltas(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every parameter of a decoded body as float32 (``float32_delta``), in file order."""
    return {name: float32_delta(tensors, name) for name in update_codec.parameter_names(tensors)}


def decode_upload(body: bytes | mmap.mmap, max_examples: int) -> Update:
    """Decode an update body (bytes, or an mmap of the front's file: read once here) with the shared
    codec; its refusals become ApiErrors with the same code.

    :raise ApiError: malformed_payload, bad_dtype, missing_scale, bad_scale, unknown_parameter,
        non_finite, missing_metadata, bad_metadata, bad_client_id, bad_num_examples, bad_loss.
    """
    try:
        return decode_update(bytes(body), max_examples)
    except UpdateFormatError as exc:
        raise ApiError(exc.code, exc.message) from None


def upload_meta(body: bytes | mmap.mmap, max_examples: int) -> UpdateMeta:
    """The checked metadata of an update body (bytes or an mmap) from its header alone: what the
    ticket lookup needs, before the body is decoded or stored.

    :raise ApiError: malformed_payload, missing_metadata, bad_metadata, bad_client_id,
        bad_num_examples, bad_loss.
    """
    try:
        return decode_meta(body, max_examples)
    except UpdateFormatError as exc:
        raise ApiError(exc.code, exc.message) from None


def decode_stored(body: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and raw metadata of a stored body (replayed at start-up), refusals as ApiErrors."""
    try:
        return decode_delta(body)
    except UpdateFormatError as exc:
        raise ApiError(exc.code, exc.message) from None


def check_client_id(value: object) -> str:
    """Return value if it is an opaque client id (the codec's rule), else raise ApiError bad_client_id."""
    try:
        return update_codec.check_client_id(value)
    except UpdateFormatError as exc:
        raise ApiError(exc.code, exc.message) from None
