"""The one binary format for weights and updates: safetensors, read and written with numpy.

Layout (https://github.com/huggingface/safetensors): 8-byte little-endian header length N,
N bytes of UTF-8 JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]},
"__metadata__": {str: str}}``, then the raw little-endian tensor bytes. We write tensors in
the given order, packed without gaps. The JS twin is ``web_client/safetensors.js``; both are
tested on the same bytes. Never pickle: a payload from a browser must not be able to run code.
"""

from __future__ import annotations

import json
import struct

import numpy as np

DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "I64": np.dtype("<i8"), "I32": np.dtype("<i4")}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
MAX_HEADER_BYTES = 1 << 20  # a header past 1 MiB is malformed for any model of ours


class WeightsFormatError(ValueError):
    """The bytes are not a well-formed safetensors payload."""


def encode(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """Serialise named arrays (and optional string metadata) to safetensors bytes."""
    header: dict[str, object] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("safetensors metadata must map str to str")
        header["__metadata__"] = dict(metadata)
    chunks, offset = [], 0
    for name, array in tensors.items():
        array = np.asarray(array)
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        if dtype not in DTYPE_NAMES:
            raise TypeError(f"tensor {name!r}: dtype {array.dtype} is not one of {sorted(DTYPES)}")
        data = np.ascontiguousarray(array, dtype=dtype).tobytes()
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # align the data section to 8 bytes, as the reference does
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)


def decode(payload: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Parse safetensors bytes into (name -> read-only array, metadata), checking every bound.

    :raise WeightsFormatError: on any structural problem, with a message fit for a client.
    """
    view = memoryview(payload)
    if len(view) < 8:
        raise WeightsFormatError("payload shorter than the 8-byte safetensors header length")
    (header_len,) = struct.unpack("<Q", view[:8])
    if header_len > MAX_HEADER_BYTES or 8 + header_len > len(view):
        raise WeightsFormatError(f"header length {header_len} does not fit the payload")
    try:
        header = json.loads(bytes(view[8:8 + header_len]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsFormatError(f"header is not UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise WeightsFormatError("header must be a JSON object")
    metadata = header.pop("__metadata__", {}) or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise WeightsFormatError("__metadata__ must map strings to strings")
    data = view[8 + header_len:]
    tensors: dict[str, np.ndarray] = {}
    spans = []
    for name, info in header.items():
        tensors[name] = _read_tensor(name, info, data)
        spans.append(tuple(info["data_offsets"]))
    expected = 0
    for begin, end in sorted(spans):
        if begin != expected:
            raise WeightsFormatError("tensor data overlaps or leaves gaps")
        expected = end
    if expected != len(data):
        raise WeightsFormatError(f"data section has {len(data) - expected} trailing bytes")
    return tensors, metadata


def _read_tensor(name: str, info: object, data: memoryview) -> np.ndarray:
    """Check one header entry against the data section and return a view on its bytes."""
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise WeightsFormatError(f"tensor {name!r}: entry needs exactly dtype, shape, data_offsets")
    dtype = DTYPES.get(info["dtype"])
    if dtype is None:
        raise WeightsFormatError(f"tensor {name!r}: unsupported dtype {info['dtype']!r}")
    shape, offsets = info["shape"], info["data_offsets"]
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise WeightsFormatError(f"tensor {name!r}: shape must be a list of non-negative ints")
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1] <= len(data)):
        raise WeightsFormatError(f"tensor {name!r}: data_offsets out of range")
    count = int(np.prod(shape, dtype=np.int64))
    if offsets[1] - offsets[0] != count * dtype.itemsize:
        raise WeightsFormatError(f"tensor {name!r}: {offsets[1] - offsets[0]} bytes for shape {shape}")
    array = np.frombuffer(data[offsets[0]:offsets[1]], dtype=dtype).reshape(shape)
    return array


def load(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a .safetensors file."""
    with open(path, "rb") as handle:
        return decode(handle.read())


def save(path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write a .safetensors file (callers that need atomicity write to a temp name and rename)."""
    with open(path, "wb") as handle:
        handle.write(encode(tensors, metadata))
