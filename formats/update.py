"""The update body a client POSTs to /api/updates (docs/PROTOCOL.md): one codec for Python.

An update is safetensors bytes (``formats.tensors``): one delta per parameter in one of three
encodings (all parameters alike), and six string metadata fields, no more and no fewer. F32 and
F16 are a tensor per parameter; Q8 is an I8 tensor ``P`` of the parameter's shape and an F32
tensor ``P#scale`` of ``ceil(n / 64)`` block scales ('#' cannot occur in a PyTorch parameter name):
value i decodes to ``P[i] * scale[i // 64]`` (``dequantise``). ``encode_update`` writes what
it is given; ``decode_update`` is the judge: every refusal is an ``UpdateFormatError`` carrying
the stable error code the server answers with. Whether the tensors match a model (names,
shapes, norm) is the server's business, not the format's. The JS twin is
``web_client/update.js``; each reads the other's bytes (tests/web/test_update.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from formats import tensors as tensor_codec

METADATA_FIELDS = ("ticket", "client_id", "base_version", "num_examples", "loss_before", "loss_after")
Q8 = "Q8"  # the int8 encoding's name: encode_update(..., dtype=Q8)
DELTA_DTYPES = ("F32", "F16", Q8)  # the encodings; a Q8 body holds I8 and F32 tensors
BLOCK = 64  # Q8 values per float32 scale: 4 bytes of scale per 64, 1.06 bytes a value
SCALE_SUFFIX = "#scale"
VALUE_DTYPES = (np.dtype("<f4"), np.dtype("<f2"), np.dtype("i1"))  # F32, F16 and Q8's values
Q8_MAX = 127  # the encoder writes [-127, 127]; a decoder takes -128 too (one more step, norm-bounded)
CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
TICKET = re.compile(r"[A-Za-z0-9_-]{1,128}")  # the server issues 32 (secrets.token_urlsafe(24))
MAX_VERSION = 2 ** 31 - 1
MAX_LOSS = 1000.0  # cross-entropy over a 512-piece vocabulary starts near ln 512 = 6.2
F16_MAX = 65504.0  # the largest finite half: F16 deltas are clipped to it, never rounded to inf
# What repr(float) and JS's String(number) write for finite numbers; not "nan", "1_0" or " 1".
DECIMAL = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


class UpdateFormatError(ValueError):
    """An update body the protocol refuses: ``code`` is the stable error code of docs/PROTOCOL.md."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class UpdateMeta:
    """The six metadata fields of an update, typed."""

    ticket: str
    client_id: str
    base_version: int
    num_examples: int
    loss_before: float
    loss_after: float

    def to_strings(self) -> dict[str, str]:
        """The safetensors ``__metadata__`` strings, in METADATA_FIELDS order."""
        return {"ticket": self.ticket, "client_id": self.client_id,
                "base_version": str(int(self.base_version)), "num_examples": str(int(self.num_examples)),
                "loss_before": repr(float(self.loss_before)), "loss_after": repr(float(self.loss_after))}


@dataclass(frozen=True)
class Update:
    """A decoded update: delta tensors (F32, F16, or I8 and their F32 scales; read-only, in
    file order) and their metadata.
    """

    tensors: dict[str, np.ndarray]
    meta: UpdateMeta


def encode_update(delta: Mapping[str, np.ndarray], meta: UpdateMeta, dtype=np.float32,
                  rng: np.random.Generator | None = None) -> bytes:
    """The update body: every delta cast to dtype (float32, or float16 clipped to +-65504 as the
    browser does, so no value becomes an infinity the server refuses; float16 arrays go as they
    are) or, for dtype ``Q8``, quantised with ``quantise`` (rng: the rounding's randomness, by
    default fresh from the OS), then the metadata.
    """
    if isinstance(dtype, str) and dtype == Q8:
        rng = np.random.default_rng() if rng is None else rng
        return tensor_codec.encode(quantise_delta(delta, rng), meta.to_strings())
    dtype = np.dtype(dtype)
    if dtype not in (tensor_codec.DTYPES[name] for name in DELTA_DTYPES[:2]):
        raise TypeError(f"deltas are sent as {', '.join(DELTA_DTYPES)}, not {dtype}")
    if dtype == np.float16:
        cast = {n: a if isinstance(a, np.ndarray) and a.dtype == np.float16  # already on the wire's grid
                else to_float16(np.clip(np.asarray(a, np.float32), -F16_MAX, F16_MAX))
                for n, a in delta.items()}
    else:
        cast = {n: np.asarray(a, dtype=dtype) for n, a in delta.items()}
    return tensor_codec.encode(cast, meta.to_strings())


def quantise_delta(delta: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The Q8 tensors of a delta, in order: each parameter's int8 values, then its scales."""
    tensors: dict[str, np.ndarray] = {}
    for name, array in delta.items():
        tensors[name], tensors[name + SCALE_SUFFIX] = quantise(array, rng)
    return tensors


def quantise(values: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(int8 values of values' shape, float32 block scales): Q8 with stochastic rounding.

    Each block of BLOCK values gets scale = max|x| / 127, and x / scale is rounded down or up at
    random with the probabilities that make E[int8 * scale] = x exactly (floor(x / scale + u),
    u uniform in [0, 1)): rounding errors average out over clients and rounds instead of adding
    up. A zero stays exactly zero, an all-zero block gets scale 0. A block holding NaN or an
    infinity gets a non-finite scale (its values 0), which the server refuses as non_finite.
    """
    flat = np.asarray(values, np.float32).ravel()
    blocks = -(-flat.size // BLOCK)
    padded = np.zeros((blocks, BLOCK))  # float64: the rounding is unbiased to far below a step
    padded.ravel()[:flat.size] = flat
    scale = (np.abs(padded).max(axis=1, initial=0.0) / Q8_MAX).astype(np.float32)
    step = scale.astype(np.float64)[:, None]
    ratio = np.divide(padded, step, out=np.zeros_like(padded), where=np.isfinite(step) & (step > 0))
    # the float32 scale may round below max|x| / 127 by half an ulp: clip the one step past 127
    rounded = np.clip(np.floor(ratio + rng.random(padded.shape)), -Q8_MAX, Q8_MAX).astype(np.int8)
    return rounded.ravel()[:flat.size].reshape(np.shape(values)), scale


def dequantise(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The float32 values of a Q8 tensor (``values`` int8, ``scale`` its checked block scales):
    two broadcast multiplies, no loop per block (the close reads every stored body back).
    """
    flat = values.reshape(-1)
    full = flat.size - flat.size % BLOCK
    out = np.empty(flat.size, np.float32)
    with np.errstate(over="ignore"):  # a scale near the float32 limit: inf, refused as non_finite
        np.multiply(flat[:full].reshape(-1, BLOCK), scale[:full // BLOCK, None],
                    out=out[:full].reshape(-1, BLOCK))
        np.multiply(flat[full:], scale[-1:], out=out[full:])  # the short last block, if any
    return out.reshape(values.shape)


F16_REBIAS = np.uint32((((15 - 127) << 23) + 0xFFF) % (1 << 32))  # exponent 127 -> 15, half an ulp - 1


def to_float16(array: np.ndarray) -> np.ndarray:
    """float32 -> float16 bit for bit as numpy's cast (ties to even), about 3x faster.

    A 1e-4-scale delta is mostly float16 *subnormals*, where numpy's cast is slow (26 ms for the
    shipped model's 690,688 weights, on the update path of every Python client). This is the
    branch-free integer conversion of F. Giesen's float_to_half_fast3_rtne, each branch computed
    for every element and picked with np.where; tests/formats checks it against numpy.
    """
    bits = np.asarray(array, dtype=np.float32).view(np.uint32)
    magnitude = bits & np.uint32(0x7FFFFFFF)
    # normal halves: rebias the exponent, round the 13 dropped mantissa bits to nearest even
    normal = (magnitude + F16_REBIAS + ((magnitude >> 13) & np.uint32(1))) >> 13
    # subnormal halves (|x| < 2^-14): adding 0.5 rounds |x| to a multiple of 2^-24 in hardware
    with np.errstate(invalid="ignore"):  # a signalling NaN; its lane is replaced below
        subnormal = (magnitude.view(np.float32) + np.float32(0.5)).view(np.uint32) - np.uint32(0x3F000000)
    half = np.where(magnitude < np.uint32(113 << 23), subnormal, normal)
    too_big = np.where(magnitude > np.uint32(0x7F800000), np.uint32(0x7E00), np.uint32(0x7C00))  # NaN, inf
    half = np.where(magnitude >= np.uint32(143 << 23), too_big, half)
    return (half | ((bits >> 16) & np.uint32(0x8000))).astype(np.uint16).view(np.float16)


def _malformed(exc: tensor_codec.WeightsFormatError) -> UpdateFormatError:
    """A codec refusal as the protocol's malformed_payload."""
    return UpdateFormatError("malformed_payload", f"body is not a valid safetensors payload: {exc}")


def decode_meta(body, max_examples: int) -> UpdateMeta:
    """The checked metadata of an update body (bytes or an mmap) from its header alone, the tensor
    data unread (``decode_update`` still judges the whole body).

    :raise UpdateFormatError: malformed_payload for a broken header, then as ``parse_metadata``.
    """
    try:
        metadata = tensor_codec.read_metadata(body)
    except tensor_codec.WeightsFormatError as exc:
        raise _malformed(exc) from None
    return parse_metadata(metadata, max_examples)


def decode_delta(body: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors and raw metadata of an update body, checked as one of the DELTA_DTYPES
    encodings (``check_encoding``).

    :raise UpdateFormatError: malformed_payload for broken bytes, then as ``check_encoding``.
    """
    try:
        tensors, metadata = tensor_codec.decode(body)
    except tensor_codec.WeightsFormatError as exc:
        raise _malformed(exc) from None
    check_encoding(tensors)
    return tensors, metadata


def parameter_names(tensors: Mapping[str, np.ndarray]) -> list[str]:
    """The deltas' names among a body's tensors (Q8's scales left out), in file order."""
    return [name for name in tensors if not name.endswith(SCALE_SUFFIX)]


def check_encoding(tensors: Mapping[str, np.ndarray]) -> None:
    """Refuse tensors that are not one delta encoding: other dtypes, a mix of encodings, and a
    Q8 tensor without its scales or with scales of the wrong dtype, shape or sign.

    :raise UpdateFormatError: bad_dtype, missing_scale, bad_scale, unknown_parameter (the scales
        of a tensor the body lacks), non_finite (a NaN or infinite scale).
    """
    values = {name: tensors[name] for name in parameter_names(tensors)}
    for name, array in values.items():
        if array.dtype not in VALUE_DTYPES:
            raise UpdateFormatError("bad_dtype", f"tensor {name!r} is {array.dtype.name}; deltas must be "
                                                 f"{', '.join(DELTA_DTYPES)} (I8 with F32 scales)")
    kinds = sorted({tensor_codec.DTYPE_NAMES[array.dtype] for array in values.values()})
    if len(kinds) > 1:
        raise UpdateFormatError("bad_dtype", f"tensors of {' and '.join(kinds)} in one body: "
                                             "all deltas of an update share one encoding")
    for name in (name for name in tensors if name not in values):  # file order, as the JS codec
        base = name[:-len(SCALE_SUFFIX)]
        if base not in tensors:
            raise UpdateFormatError("unknown_parameter",
                                    f"tensor {name!r} scales {base!r}, which the body lacks")
        if tensors[base].dtype != np.int8:
            raise UpdateFormatError("bad_scale", f"tensor {name!r} scales {base!r}, which is not I8")
    for name, array in values.items():
        if array.dtype == np.int8:
            _check_scale(name, array, tensors.get(name + SCALE_SUFFIX))


def _check_scale(name: str, values: np.ndarray, scale: np.ndarray | None) -> None:
    """The scales of one I8 tensor: F32, one per block, finite, not negative."""
    if scale is None:
        raise UpdateFormatError("missing_scale", f"I8 tensor {name!r} has no {name + SCALE_SUFFIX!r} tensor")
    blocks = -(-values.size // BLOCK)
    if scale.dtype != np.float32 or scale.shape != (blocks,):
        got = f"{tensor_codec.DTYPE_NAMES[scale.dtype]} {list(scale.shape)[:8]}"
        raise UpdateFormatError("bad_scale", f"{name + SCALE_SUFFIX!r} must be F32 of shape [{blocks}] "
                                             f"(one per {BLOCK} values), not {got}")
    if not np.isfinite(scale).all():
        raise UpdateFormatError("non_finite", f"{name + SCALE_SUFFIX!r} holds NaN or infinite values")
    if (scale < 0).any():
        raise UpdateFormatError("bad_scale", f"{name + SCALE_SUFFIX!r} holds negative scales")


def decode_update(body: bytes, max_examples: int) -> Update:
    """Parse and check an update body: tensors, then each of the six metadata fields.

    :param max_examples: the largest num_examples accepted (the server's MAX_NUM_EXAMPLES).
    :raise UpdateFormatError: malformed_payload, those of ``check_encoding``, missing_metadata,
        bad_metadata, bad_client_id, bad_num_examples or bad_loss.
    """
    tensors, metadata = decode_delta(body)
    return Update(tensors, parse_metadata(metadata, max_examples))


def parse_metadata(metadata: Mapping[str, str], max_examples: int) -> UpdateMeta:
    """The six metadata fields, each checked; other keys are refused so both clients stay in step.

    :raise UpdateFormatError: missing_metadata, bad_metadata, bad_client_id, bad_num_examples, bad_loss.
    """
    missing = [f for f in METADATA_FIELDS if f not in metadata]
    if missing:
        raise UpdateFormatError("missing_metadata", f"__metadata__ lacks {', '.join(missing)}")
    unknown = sorted(set(metadata) - set(METADATA_FIELDS))
    if unknown:
        raise UpdateFormatError("bad_metadata", f"unknown __metadata__ keys {unknown[:5]}; "
                                                f"allowed: {', '.join(METADATA_FIELDS)}")
    if not TICKET.fullmatch(metadata["ticket"]):  # it is hashed and looked up before the body is read
        raise UpdateFormatError("bad_metadata",
                                "ticket must be 1-128 characters of A-Z, a-z, 0-9, '_' or '-'")
    return UpdateMeta(
        ticket=metadata["ticket"],
        client_id=check_client_id(metadata["client_id"]),
        base_version=_int_field(metadata, "base_version", "bad_metadata", 0, MAX_VERSION),
        num_examples=_int_field(metadata, "num_examples", "bad_num_examples", 1, max_examples),
        loss_before=_loss_field(metadata, "loss_before"),
        loss_after=_loss_field(metadata, "loss_after"))


def check_client_id(value: object) -> str:
    """Return value if it is an opaque client id (8-64 chars of [A-Za-z0-9_-]).

    :raise UpdateFormatError: bad_client_id otherwise.
    """
    if not isinstance(value, str) or not CLIENT_ID.fullmatch(value):
        raise UpdateFormatError("bad_client_id",
                                "client_id must be 8-64 characters of A-Z, a-z, 0-9, '_' or '-'")
    return value


def _int_field(metadata: Mapping[str, str], name: str, code: str, low: int, high: int) -> int:
    """A decimal integer metadata field within [low, high]."""
    raw = metadata[name]
    if not re.fullmatch(r"-?[0-9]{1,12}", raw) or not low <= int(raw) <= high:
        raise UpdateFormatError(code, f"{name} must be an integer from {low} to {high}, got {raw[:40]!r}")
    return int(raw)


def _loss_field(metadata: Mapping[str, str], name: str) -> float:
    """A finite decimal loss from 0 to MAX_LOSS."""
    raw = metadata[name]
    value = float(raw) if len(raw) <= 40 and DECIMAL.fullmatch(raw) else math.nan
    if not (math.isfinite(value) and 0.0 <= value <= MAX_LOSS):
        raise UpdateFormatError("bad_loss", f"{name} must be a finite number from 0 to {MAX_LOSS:g}, "
                                            f"got {raw[:40]!r}")
    return value
