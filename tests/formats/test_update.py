"""The update codec: typed round trips, and each refusal with its protocol error code."""

import math

import numpy as np
import pytest

from formats import tensors as tensor_codec
from formats.update import (
    BLOCK,
    METADATA_FIELDS,
    Q8,
    UpdateFormatError,
    UpdateMeta,
    decode_delta,
    decode_meta,
    decode_update,
    dequantise,
    encode_update,
    quantise,
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
    with pytest.raises(TypeError, match="F32, F16, Q8"):
        encode_update(delta(), META, np.int32)


@pytest.mark.parametrize("payload, code, message", [
    (b"1234567", "malformed_payload", "shorter than"),
    (body({"x": np.zeros(2, np.int32)}), "bad_dtype", "F32, F16, Q8"),
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


def q8(values: np.ndarray, scale=None, name: str = "x") -> dict[str, np.ndarray]:
    """A Q8 tensor pair: int8 values and their scales (default: one 0.5 per block)."""
    blocks = -(-values.size // BLOCK)
    return {name: values.astype(np.int8), f"{name}#scale": np.full(blocks, 0.5, np.float32) if scale is None
            else np.asarray(scale)}


def test_q8_round_trip_is_within_one_step_and_keeps_zeros():
    """Every value decodes within one step (its block's scale) of the delta, the largest of a
    block exactly as far as float32 allows, zeros and all-zero blocks exactly (scale 0)."""
    # Prepare: 3 full blocks and a short one; the second block all zero, zeros scattered elsewhere
    rng = np.random.default_rng(1)
    values = rng.normal(scale=1e-3, size=(4, 50)).astype(np.float32)
    values.ravel()[BLOCK:2 * BLOCK] = 0.0
    values.ravel()[::7] = 0.0
    # Execute
    update = decode_update(encode_update({"w": values}, META, Q8, rng), max_examples=1000)
    # Assert
    assert [(n, a.dtype.name, a.shape) for n, a in update.tensors.items()] == [
        ("w", "int8", (4, 50)), ("w#scale", "float32", (4,))]
    scale = update.tensors["w#scale"]
    decoded = dequantise(update.tensors["w"], scale)
    assert decoded.dtype == np.float32 and decoded.shape == values.shape
    step = np.repeat(scale, BLOCK)[:values.size].reshape(values.shape)
    assert (np.abs(decoded - values) <= step).all()
    assert scale[1] == 0.0 and (decoded[values == 0] == 0).all()
    blocks = np.abs(np.pad(values.ravel(), (0, 4 * BLOCK - values.size))).reshape(4, BLOCK).max(axis=1)
    np.testing.assert_allclose(scale * 127, blocks, rtol=1e-6)
    assert np.abs(update.tensors["w"]).max() <= 127


def test_q8_rounding_is_unbiased():
    """The mean of K independent decodings of one delta tends to the delta itself.

    Each decoded value is x + step * (B - p) with B a Bernoulli(p): Hoeffding bounds the mean of K
    of them, P(|mean - x| >= t * step) <= 2 exp(-2 K t^2), so over N values the tolerance t with
    2 N exp(-2 K t^2) = 1e-9 fails a correct encoder once in a billion runs; rounding to nearest
    (an error of up to half a step) or down would be far outside it.
    """
    # Prepare: values at every fraction of a step, in four blocks
    rng = np.random.default_rng(2)
    values = rng.uniform(-1, 1, size=4 * BLOCK).astype(np.float32)
    draws = 2000
    tolerance = math.sqrt(math.log(2 * values.size / 1e-9) / (2 * draws))
    # Execute
    total, scale = np.zeros(values.size), None
    for _ in range(draws):
        rounded, scale = quantise(values, rng)
        total += dequantise(rounded, scale)
    # Assert: the scale is a function of the values alone, so step is the same every draw
    step = np.repeat(scale, BLOCK).astype(np.float64)
    assert np.abs(total / draws - values).max() <= tolerance * step.min()
    assert tolerance < 0.1  # so the bound is tight enough to catch a rounding to nearest


def test_q8_of_a_non_finite_delta_is_refused_as_non_finite():
    """The encoder does not hide a NaN: its block's scale becomes NaN, which the decoder refuses."""
    values = np.array([1.0, np.nan, 0.5], np.float32)
    with pytest.raises(UpdateFormatError, match="x#scale") as caught:
        decode_update(encode_update({"x": values}, META, Q8), max_examples=1000)
    assert caught.value.code == "non_finite"


def test_q8_accepts_minus_128():
    """-128 is one step past what the encoder writes; it decodes like any other value."""
    update = decode_update(body(q8(np.array([-128, 127, 0]))), max_examples=1000)
    decoded = dequantise(update.tensors["x"], update.tensors["x#scale"])
    np.testing.assert_array_equal(decoded, [-64.0, 63.5, 0.0])


@pytest.mark.parametrize("tensors, code, message", [
    (q8(np.zeros(3), scale=None, name="x") | {"y": np.zeros(2, np.int8)}, "missing_scale", "'y#scale'"),
    (q8(np.zeros(65), scale=np.ones(1, np.float32)), "bad_scale", r"shape \[2\]"),
    (q8(np.zeros(64), scale=np.ones(2, np.float32)), "bad_scale", r"shape \[1\]"),
    (q8(np.zeros(3), scale=np.ones((1, 1), np.float32)), "bad_scale", r"shape \[1\]"),
    (q8(np.zeros(3), scale=np.ones(1, np.float16)), "bad_scale", "must be F32"),
    (q8(np.zeros(3), scale=np.array([np.nan], np.float32)), "non_finite", "NaN or infinite"),
    (q8(np.zeros(3), scale=np.array([np.inf], np.float32)), "non_finite", "NaN or infinite"),
    (q8(np.zeros(3), scale=np.array([-1.0], np.float32)), "bad_scale", "negative"),
    (q8(np.zeros(3)) | {"z#scale": np.ones(1, np.float32)}, "unknown_parameter", "'z'"),
    ({"x": np.zeros(3, np.float32), "x#scale": np.ones(1, np.float32)}, "bad_scale", "not I8"),
    (q8(np.zeros(3)) | {"y": np.zeros(2, np.float32)}, "bad_dtype", "F32 and I8 in one body"),
    ({"x": np.zeros(3, np.float32), "y": np.zeros(2, np.float16)}, "bad_dtype", "F16 and F32 in one body"),
], ids=["I8 without scale", "too few scales", "too many scales", "scales not a vector", "F16 scales",
        "NaN scale", "infinite scale", "negative scale", "scale without its tensor", "scale of an F32 tensor",
        "Q8 mixed with F32", "F16 mixed with F32"])
def test_malformed_q8_bodies_are_refused(tensors, code, message):
    with pytest.raises(UpdateFormatError, match=message) as caught:
        decode_update(body(tensors), max_examples=1000)
    assert caught.value.code == code
