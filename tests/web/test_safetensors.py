"""web_client/safetensors.js and formats/tensors.py read and write the same bytes."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from formats import tensors as tensor_codec

METADATA = {"ticket": "t-123", "client_id": "abc_DEF-9", "loss_before": "2.5", "note": "ünïcode ✓"}
DECODE = """async (payload) => {
  const { decode } = await import("/static/safetensors.js");
  const { tensors, metadata } = decode(Uint8Array.from(payload));
  const out = {};
  for (const [name, t] of tensors) {
    out[name] = { dtype: t.dtype, shape: t.shape, values: Array.from(t.data, String) };
  }
  return { tensors: out, metadata, order: [...tensors.keys()] };
}"""
ENCODE = """async ([tensors, metadata]) => {
  const { encode, DTYPES } = await import("/static/safetensors.js");
  const list = tensors.map(([name, dtype, shape, values]) => ({ name, shape,
    data: dtype === "I64" ? BigInt64Array.from(values, BigInt) : DTYPES[dtype].from(values) }));
  return Array.from(encode(list, metadata));
}"""
REJECTS = """async (payload) => {
  const { decode, WeightsFormatError } = await import("/static/safetensors.js");
  try { decode(Uint8Array.from(payload)); return "accepted"; }
  catch (error) { return error instanceof WeightsFormatError ? "rejected" : `wrong error: ${error}`; }
}"""


def sample_tensors() -> dict[str, np.ndarray]:
    """One tensor per supported dtype, with awkward values."""
    return {"embed.weight": np.array([[0.1, -2.5e-8, 3e38], [np.pi, -0.0, 1.0]], np.float32),
            "ids": np.array([-(2 ** 62), 7], np.int64), "counts": np.arange(5, dtype=np.int32) - 2,
            "half": np.array([1.5, -2.0, 65504.0], np.float16), "empty": np.zeros((0, 3), np.float32)}


def raw(header: dict | bytes, data: bytes = b"", header_len: int | None = None) -> bytes:
    """A safetensors payload from a literal header, or its raw bytes (to build malformed ones)."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(head) if header_len is None else header_len) + head + data


def test_js_decodes_python_bytes(module_page):
    """Every dtype, shape, value, metadata string and the tensor order survive Python -> JS."""
    # Prepare
    tensors = sample_tensors()
    payload = tensor_codec.encode(tensors, METADATA)
    # Execute
    got = module_page.evaluate(DECODE, list(payload))
    # Assert
    assert got["metadata"] == METADATA
    assert got["order"] == list(tensors)
    for name, array in tensors.items():
        entry = got["tensors"][name]
        assert entry["dtype"] == tensor_codec.DTYPE_NAMES[array.dtype] and entry["shape"] == list(array.shape)
        expected = array.view(np.uint16) if array.dtype == np.float16 else array
        values = expected.ravel().tolist()
        assert [type(v)(s) for v, s in zip(values, entry["values"], strict=True)] == values


def test_js_encodes_the_same_bytes_as_python(module_page):
    """JS encode == Python encode, byte for byte (header JSON, padding, data), and Python reads it."""
    # Prepare
    tensors = sample_tensors()
    spec = [[name, tensor_codec.DTYPE_NAMES[a.dtype], list(a.shape),
             (a.view(np.uint16) if a.dtype == np.float16 else a).ravel().tolist()]
            for name, a in tensors.items()]
    # Execute
    payload = bytes(module_page.evaluate(ENCODE, [spec, METADATA]))
    # Assert
    assert payload == tensor_codec.encode(tensors, METADATA)
    decoded, metadata = tensor_codec.decode(payload)
    assert metadata == METADATA and all(np.array_equal(decoded[n], a) for n, a in tensors.items())


F32_4 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


def f32(shape: list, end: int) -> bytes:
    """One F32 tensor "x" with a literal shape over `end` zero bytes."""
    return raw({"x": {"dtype": "F32", "shape": shape, "data_offsets": [0, end]}}, bytes(end))


MALFORMED = {
    "shorter than the length field": b"\x01\x02",
    "header length past the end": raw({}, header_len=4096),
    "header not JSON": struct.pack("<Q", 4) + b"{nop",
    "header not an object": raw([1, 2]),  # type: ignore[arg-type]
    "metadata not strings": raw({"__metadata__": {"a": 1}}),
    "unknown dtype": raw({"x": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}}, bytes(8)),
    "bytes do not match shape": raw({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),
    "offsets out of range": raw({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(4)),
    "negative dimension": raw({"x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8)),
    "gap between tensors": raw({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)),
    "overlapping tensors": raw({"x": F32_4, "y": F32_4}, bytes(8)),
    "trailing bytes": raw({"x": F32_4}, bytes(12)),
    "extra key in an entry": raw({"x": {**F32_4, "extra": 1}}, bytes(8)),
    # hostile headers that made the Python decoder raise other exceptions (500 on the server)
    "deeply nested header": raw(b'{"x":' * 100_000 + b"1" + b"}" * 100_000),
    "dtype is a list": raw({"x": {**F32_4, "dtype": ["F32"]}}, bytes(8)),
    "shape product wraps int64": f32([2 ** 32, 2 ** 32], 0),
    "64 dimensions of 2": f32([2] * 64, 0),
    "dimension past int64": f32([2 ** 70], 8),
    "200,000-digit dimension": raw(b'{"x":{"dtype":"F32","shape":[' + b"9" * 200_000
                                   + b'],"data_offsets":[0,8]}}', bytes(8)),
    "zero by a dimension past 2**53": f32([0, 2 ** 53], 0),
    "33 dimensions": f32([1] * 31 + [2, 1], 8),
}


@pytest.mark.parametrize("payload", MALFORMED.values(), ids=MALFORMED.keys())
def test_both_codecs_reject_malformed_payloads(module_page, payload):
    """Each malformed payload is a WeightsFormatError in Python and in JS."""
    with pytest.raises(tensor_codec.WeightsFormatError):
        tensor_codec.decode(payload)
    assert module_page.evaluate(REJECTS, list(payload)) == "rejected"


TO_F16 = """async (values) => {
  const { toF16 } = await import("/static/safetensors.js");
  return Array.from(toF16(Float32Array.from(values)));
}"""


def test_to_f16_rounds_like_numpy_and_clips_instead_of_overflowing(module_page):
    """Deltas sent as F16: the bits numpy's float32 -> float16 rounding gives, except that values
    past the half range become +-65504 instead of infinities the server would refuse."""
    # Prepare: normal and subnormal magnitudes, exact ties, the range's edges, far beyond it
    rng = np.random.default_rng(5)
    spread = rng.standard_normal(4000) * 10.0 ** rng.integers(-9, 6, 4000)
    edges = [0.0, -0.0, 2 ** -24, 2 ** -25, 3 * 2 ** -25, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 65504, 65519, 65520,
             -65520, 1e6, -3e38]
    values = np.concatenate([spread, edges]).astype(np.float32)
    # Execute
    got = np.array(module_page.evaluate(TO_F16, values.tolist()), np.uint16)
    # Assert
    expected = np.clip(values, -65504, 65504).astype(np.float16)
    assert np.array_equal(got, expected.view(np.uint16))
    assert np.isfinite(got.view(np.float16)).all() and (np.abs(values) > 65504).sum() > 100
