"""The update codec: typed round trips, and each refusal with its protocol error code."""

import numpy as np
import pytest

from formats import tensors as tensor_codec
from formats.update import (
    METADATA_FIELDS,
    UpdateFormatError,
    UpdateMeta,
    decode_delta,
    decode_meta,
    decode_update,
    encode_update,
    to_float16,
)

META = UpdateMeta(ticket="t-1", client_id="client_0001", base_version=3, num_examples=12,
                  loss_before=2.5, loss_after=0.1)
STRINGS = META.to_strings()


def delta() -> dict[str, np.ndarray]:
    return {"embed.weight": np.array([[0.5, -1.0], [1e-3, 0.0]], np.float32),
            "head.bias": np.ones(3, np.float32)}


def body(tensors=None, **overrides) -> bytes:
    """A body from raw metadata strings (None drops a field), to build refused ones."""
    metadata = {k: v for k, v in {**STRINGS, **overrides}.items() if v is not None}
    return tensor_codec.encode(delta() if tensors is None else tensors, metadata)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_round_trip_keeps_tensors_order_and_typed_metadata(dtype):
    update = decode_update(encode_update(delta(), META, dtype), max_examples=1000)
    assert update.meta == META
    assert list(update.tensors) == list(delta())
    for name, value in delta().items():
        assert update.tensors[name].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(update.tensors[name], value.astype(dtype))


def test_metadata_strings_are_the_protocol_fields():
    assert list(STRINGS) == list(METADATA_FIELDS)
    assert STRINGS == {"ticket": "t-1", "client_id": "client_0001", "base_version": "3", "num_examples": "12",
                       "loss_before": "2.5", "loss_after": "0.1"}


def test_f16_deltas_are_clipped_to_the_half_range_not_rounded_to_infinity():
    big = {"x": np.array([70000.0, -1e30, 65504.0, 1.5], np.float32)}
    update = decode_update(encode_update(big, META, np.float16), max_examples=1000)
    np.testing.assert_array_equal(update.tensors["x"], np.array([65504, -65504, 65504, 1.5], np.float16))


def test_to_float16_is_numpys_cast_bit_for_bit():
    """Every sign, exponent and rounding case: random bit patterns, the ties between two halves
    (normal and subnormal), the edges of the subnormal, normal and overflow ranges, inf and NaN.
    (All 2^32 float32 values were checked once the same way, NaN payloads aside.)
    """
    rng = np.random.default_rng(0)
    patterns = rng.integers(0, 2 ** 32, size=1 << 20, dtype=np.uint64).astype(np.uint32).view(np.float32)
    k = np.arange(2048, dtype=np.float32)
    ties = np.concatenate([(k + 0.5) * np.float32(2.0 ** -24), 1 + (k + 0.5) * np.float32(2.0 ** -10)])
    edges = np.array([0.0, 2.0 ** -25, 2.0 ** -24, 2.0 ** -14 * (1 - 2.0 ** -12), 2.0 ** -14, 65504, 65519,
                      65520, 1e30, np.inf, np.nan], np.float32)
    values = np.concatenate([patterns, rng.normal(scale=1e-4, size=100_000).astype(np.float32), ties, edges])
    values = np.concatenate([values, -values])
    with np.errstate(over="ignore", invalid="ignore"):
        expected = values.astype(np.float16)
    actual = to_float16(values)
    finite = ~np.isnan(values)
    np.testing.assert_array_equal(actual.view(np.uint16)[finite], expected.view(np.uint16)[finite])
    assert np.isnan(actual[~finite]).all()
    assert (np.signbit(actual) == np.signbit(expected))[~finite].all()


def test_f16_deltas_are_sent_as_they_are():
    halves = {"x": np.array([1e-6, -65504, 0.1], np.float16)}
    update = decode_update(encode_update(halves, META, np.float16), max_examples=1000)
    np.testing.assert_array_equal(update.tensors["x"].view(np.uint16), halves["x"].view(np.uint16))


def test_encode_refuses_integer_deltas():
    with pytest.raises(TypeError, match="F32 or F16"):
        encode_update(delta(), META, np.int32)


@pytest.mark.parametrize("payload, code, message", [
    (b"1234567", "malformed_payload", "shorter than"),
    (body({"x": np.zeros(2, np.int32)}), "bad_dtype", "F32 or F16"),
    (body(ticket=None), "missing_metadata", "ticket"),
    (body(loss_before=None, loss_after=None), "missing_metadata", "loss_before, loss_after"),
    (body(epochs="3"), "bad_metadata", "unknown __metadata__ keys"),
    (body(base_version="v1"), "bad_metadata", "base_version"),
    (body(base_version="-1"), "bad_metadata", "base_version"),
    (body(base_version=str(2 ** 31)), "bad_metadata", "base_version"),
    (body(ticket=""), "bad_metadata", "ticket must be 1-128"),
    (body(ticket="t" * 129), "bad_metadata", "ticket must be 1-128"),
    (body(client_id="abc"), "bad_client_id", "8-64"),
    (body(client_id="../../etc/passwd"), "bad_client_id", "8-64"),
    (body(num_examples="0"), "bad_num_examples", "from 1 to 1000"),
    (body(num_examples="1001"), "bad_num_examples", "1001"),
    (body(num_examples="3.5"), "bad_num_examples", "3.5"),
    (body(num_examples="1" * 200), "bad_num_examples", "from 1"),
    (body(loss_before="nan"), "bad_loss", "loss_before"),
    (body(loss_after="-1"), "bad_loss", "loss_after"),
    (body(loss_after="inf"), "bad_loss", "loss_after"),
    (body(loss_after="1e400"), "bad_loss", "loss_after"),
    (body(loss_after="1000.5"), "bad_loss", "loss_after"),
    (body(loss_after="1_0"), "bad_loss", "loss_after"),
    (body(loss_after=" 1"), "bad_loss", "loss_after"),
    (body(loss_after=""), "bad_loss", "loss_after"),
])
def test_refusals_carry_the_protocol_code(payload, code, message):
    with pytest.raises(UpdateFormatError, match=message) as caught:
        decode_update(payload, max_examples=1000)
    assert caught.value.code == code


def test_the_header_alone_refuses_a_ticket_it_could_not_hash():
    """decode_meta reads the header with Python's json, which takes an escaped lone surrogate (the
    full decoder's parser does not); hashing such a ticket for its lookup raised, a 500."""
    with pytest.raises(UpdateFormatError, match="ticket must be 1-128") as caught:
        decode_meta(body(ticket="\ud800"), max_examples=1000)
    assert caught.value.code == "bad_metadata"


@pytest.mark.parametrize("loss", ["0", "2", "2.5", "1e-07", "1e-7", "6.2383246250395", ".5", "5.", "1000",
                                  "0.0"])
def test_losses_written_by_python_or_js_are_read(loss):
    assert decode_update(body(loss_before=loss), max_examples=1000).meta.loss_before == float(loss)


def test_decode_delta_checks_only_the_tensors():
    tensors, metadata = decode_delta(body(epochs="3"))
    assert list(tensors) == list(delta()) and metadata["epochs"] == "3"
