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


def _one(dtype="F32", shape=(1,), offsets=(0, 4), data=4) -> bytes:
    """A payload with one tensor "x" described by a literal entry, and `data` zero bytes."""
    entry = {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}
    return _with_header({"x": entry}, b"\0" * data)


@pytest.mark.parametrize("payload, message", [
    (b"\x01\x02", "shorter"),
    (struct.pack("<Q", 10**9) + b"{}", "does not fit"),
    (struct.pack("<Q", 2) + b"\xff\xfe", "not UTF-8 JSON"),
    (_with_header([], b""), "JSON object"),
    (_one("F64", offsets=(0, 8), data=8), "unsupported dtype"),
    (_one(shape=[2]), "bytes for shape"),
    (_one(offsets=(0, 8)), "out of range"),
    (_one(shape=[-1]), "non-negative"),
    (_one(data=8), "trailing"),
    (_with_header({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                   "y": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), "overlaps"),
    (_with_header({"__metadata__": {"a": 1}}, b""), "strings"),
    (_with_header({"x": {"dtype": "F32", "shape": [1]}}, b"\0" * 4), "exactly"),
])
def test_malformed_payloads_are_refused(payload, message):
    with pytest.raises(WeightsFormatError, match=message):
        decode(payload)


def _raw(header_json: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header_json)) + header_json + data


# Inputs that raised other exceptions than WeightsFormatError (a 500 on the server) before the
# decoder parsed headers with limits and exact integers.
HOSTILE = {
    "deeply nested header": _raw(b'{"x":' * 100_000 + b"1" + b"}" * 100_000),
    "dtype is a list": _one(["F32"]),
    "shape product wraps to 0 in int64": _one(shape=[2 ** 32, 2 ** 32], offsets=(0, 0), data=0),
    "64 dimensions of 2 wrap to 0 in int64": _one(shape=[2] * 64, offsets=(0, 0), data=0),
    "dimension past int64": _one(shape=[2 ** 70]),
    "200,000-digit integer": _raw(b'{"x": {"dtype": "F32", "shape": [' + b"9" * 200_000
                                  + b'], "data_offsets": [0, 4]}}', b"\0" * 4),
    "huge integer in metadata position": _raw(b'{"__metadata__": ' + b"1" * 200_000 + b"}"),
}


@pytest.mark.parametrize("payload", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_headers_are_format_errors(payload):
    """Each is refused as malformed (WeightsFormatError), not with RecursionError, TypeError,
    OverflowError or a bare ValueError."""
    with pytest.raises(WeightsFormatError):
        decode(payload)


@pytest.mark.parametrize("payload, message", [
    (_raw(b'{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
          b'"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4), "repeats a key"),
    (_with_header({"__metadata__": 0}, b""), "strings"),
    (_one(shape=[0, 2 ** 53], offsets=(0, 0), data=0), "dimensions"),
    (_one(shape=[1] * 33), "dimensions"),
    (_one(shape=[True]), "non-negative"),
])
def test_strict_checks_beyond_the_reference_reader(payload, message):
    with pytest.raises(WeightsFormatError, match=message):
        decode(payload)


def test_decoded_arrays_are_read_only_and_aligned():
    decoded, _ = decode(encode({"a": np.ones(3, np.float16), "b": np.arange(5, dtype=np.int64)}))
    for array in decoded.values():
        assert not array.flags.writeable and array.ctypes.data % array.dtype.itemsize == 0


def test_empty_and_zero_sized_tensors_round_trip():
    assert decode(encode({})) == ({}, {})
    decoded, _ = decode(encode({"e": np.zeros((0, 3), np.float32), "s": np.float32(2.5)}))
    assert decoded["e"].shape == (0, 3) and decoded["s"].shape == () and decoded["s"] == 2.5
