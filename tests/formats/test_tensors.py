"""The safetensors codec: round trips, and refusal of malformed payloads."""

import json
import struct

import numpy as np
import pytest

from formats.tensors import WeightsFormatError, decode, encode


def test_round_trip_keeps_names_order_values_and_metadata():
    tensors = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.array([1.5], dtype=np.float16),
               "ids": np.array([[7]], dtype=np.int64)}
    decoded, metadata = decode(encode(tensors, {"client_id": "abc"}))
    assert list(decoded) == ["b", "a", "ids"]
    for name, value in tensors.items():
        np.testing.assert_array_equal(decoded[name], value)
        assert decoded[name].dtype == value.dtype
    assert metadata == {"client_id": "abc"}


def test_layout_matches_the_safetensors_spec():
    """Header length, JSON offsets and raw little-endian data, byte for byte."""
    payload = encode({"x": np.array([1.0, -2.0], dtype=np.float32)})
    (length,) = struct.unpack("<Q", payload[:8])
    header = json.loads(payload[8:8 + length])
    assert header == {"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    assert length % 8 == 0
    assert payload[8 + length:] == struct.pack("<2f", 1.0, -2.0)


def _with_header(header: dict, data: bytes) -> bytes:
    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + data


@pytest.mark.parametrize("payload, message", [
    (b"\x01\x02", "shorter"),
    (struct.pack("<Q", 10**9) + b"{}", "does not fit"),
    (struct.pack("<Q", 2) + b"\xff\xfe", "not UTF-8 JSON"),
    (_with_header([], b""), "JSON object"),
    (_with_header({"x": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8), "unsupported dtype"),
    (_with_header({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4), "bytes for shape"),
    (_with_header({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 4), "out of range"),
    (_with_header({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4), "non-negative"),
    (_with_header({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8), "trailing"),
    (_with_header({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                   "y": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), "overlaps"),
    (_with_header({"__metadata__": {"a": 1}}, b""), "strings"),
    (_with_header({"x": {"dtype": "F32", "shape": [1]}}, b"\0" * 4), "exactly"),
])
def test_malformed_payloads_are_refused(payload, message):
    with pytest.raises(WeightsFormatError, match=message):
        decode(payload)
