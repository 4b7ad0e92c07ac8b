"""web_client/update.js and formats/update.py write and read the same update bodies."""

from __future__ import annotations

import math

import numpy as np
import pytest
from page_helpers import assert_q8_rounding

from formats import tensors as tensor_codec
from formats.update import BLOCK, Q8, UpdateFormatError, UpdateMeta, decode_update, dequantise, encode_update

MAX_EXAMPLES = 1000
META = UpdateMeta(ticket="tk_9f8e", client_id="Client-0001_x", base_version=7, num_examples=42,
                  loss_before=3.25, loss_after=0.125)
JS_META = {"ticket": META.ticket, "clientId": META.client_id, "baseVersion": META.base_version,
           "numExamples": META.num_examples, "lossBefore": META.loss_before, "lossAfter": META.loss_after}
ENCODE = """async ([tensors, meta, dtype]) => {
  const { encodeUpdate } = await import("/static/update.js");
  const delta = tensors.map(([name, shape, values]) => ({ name, shape, data: Float32Array.from(values) }));
  return Array.from(encodeUpdate(delta, meta, dtype));
}"""
DECODE = """async ([body, maxExamples]) => {
  const { decodeUpdate, UpdateFormatError } = await import("/static/update.js");
  try {
    const { tensors, meta } = decodeUpdate(Uint8Array.from(body), maxExamples);
    const out = [...tensors].map(([name, t]) => [name, t.dtype, t.shape, Array.from(t.data)]);
    return { meta, tensors: out };
  } catch (error) {
    return error instanceof UpdateFormatError ? { code: error.code } : { wrong: String(error) };
  }
}"""


def delta() -> dict[str, np.ndarray]:
    """Two small float32 deltas with awkward values (F16 rounding, a subnormal, past the half range)."""
    return {"embed.weight": np.array([[0.1, -2.5e-8], [3e-3, 70000.0]], np.float32),
            "head.bias": np.array([1.0, -0.0, 1e-30], np.float32)}


@pytest.mark.parametrize("dtype", ["F32", "F16"])
def test_python_reads_js_updates(module_page, dtype):
    """JS-encoded bodies decode in Python to the same metadata and deltas (F16: numpy's rounding,
    clipped to the half range)."""
    # Prepare
    spec = [[name, list(a.shape), a.ravel().tolist()] for name, a in delta().items()]
    # Execute
    body = bytes(module_page.evaluate(ENCODE, [spec, JS_META, dtype]))
    # Assert
    update = decode_update(body, MAX_EXAMPLES)
    assert update.meta == META and list(update.tensors) == list(delta())
    for name, value in delta().items():
        expected = value if dtype == "F32" else np.clip(value, -65504, 65504).astype(np.float16)
        assert update.tensors[name].dtype == expected.dtype
        np.testing.assert_array_equal(update.tensors[name], expected)
    if dtype == "F32":
        assert body == encode_update(delta(), META), "same input, same bytes"


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_js_reads_python_updates(module_page, dtype):
    # Execute
    got = module_page.evaluate(DECODE, [list(encode_update(delta(), META, dtype)), MAX_EXAMPLES])
    # Assert
    assert got["meta"] == JS_META
    assert [name for name, *_ in got["tensors"]] == list(delta())
    for name, dtype_name, shape, values in got["tensors"]:
        array = delta()[name] if dtype == np.float32 else np.clip(delta()[name], -65504, 65504).astype(dtype)
        assert (dtype_name, shape) == (tensor_codec.DTYPE_NAMES[array.dtype], list(array.shape))
        assert values == (array.view(np.uint16) if dtype == np.float16 else array).ravel().tolist()


def test_python_reads_js_q8_updates(module_page):
    """JS's Q8 bodies decode in Python: the scales are max|x| / 127 bit for bit as Python's, each
    value is x / scale rounded down or up, zeros are zeros."""
    # Prepare: one parameter of two blocks and a short one, beside the awkward small ones
    values = {**delta(), "w": np.random.default_rng(4).normal(size=(3, 50)).astype(np.float32)}
    values["w"][1] = 0.0
    spec = [[name, list(a.shape), a.ravel().tolist()] for name, a in values.items()]
    # Execute
    body = bytes(module_page.evaluate(ENCODE, [spec, JS_META, "Q8"]))
    # Assert
    update = decode_update(body, MAX_EXAMPLES)
    assert update.meta == META
    assert list(update.tensors) == [n + suffix for n in values for suffix in ("", "#scale")]
    for name, value in values.items():
        rounded, scale = update.tensors[name], update.tensors[name + "#scale"]
        assert_q8_rounding(rounded, scale, value)
        assert (dequantise(rounded, scale)[value == 0] == 0).all()


def test_js_q8_rounding_is_unbiased(module_page):
    """The mean of K JS encodings tends to the delta, within the Hoeffding bound of
    tests/formats/test_update.py's test_q8_rounding_is_unbiased (crypto.getRandomValues' draws)."""
    # Prepare
    values = np.random.default_rng(5).uniform(-1, 1, size=4 * BLOCK).astype(np.float32)
    draws = 2000
    tolerance = math.sqrt(math.log(2 * values.size / 1e-9) / (2 * draws))
    # Execute
    mean, scale = module_page.evaluate("""async ([values, draws]) => {
      const { quantise } = await import("/static/update.js");
      const data = Float32Array.from(values), total = new Float64Array(data.length);
      let scale;
      for (let k = 0; k < draws; k++) {
        const q = quantise(data);
        scale = q.scale;
        q.values.forEach((v, i) => { total[i] += v * scale[Math.floor(i / 64)]; });
      }
      return [Array.from(total, (t) => t / draws), Array.from(scale)];
    }""", [values.tolist(), draws])
    # Assert
    step = np.float64(min(scale))
    assert np.abs(np.array(mean) - values).max() <= tolerance * step


def test_js_reads_python_q8_updates(module_page):
    # Prepare
    body = encode_update(delta(), META, Q8, np.random.default_rng(6))
    tensors = decode_update(body, MAX_EXAMPLES).tensors
    # Execute
    got = module_page.evaluate(DECODE, [list(body), MAX_EXAMPLES])
    # Assert
    assert got["meta"] == JS_META
    assert [(n, d, s) for n, d, s, _ in got["tensors"]] == [
        (n, tensor_codec.DTYPE_NAMES[a.dtype], list(a.shape)) for n, a in tensors.items()]
    for name, _, _, values in got["tensors"]:
        assert values == tensors[name].ravel().tolist()


def _body(tensors=None, **overrides) -> bytes:
    metadata = {k: v for k, v in {**META.to_strings(), **overrides}.items() if v is not None}
    return tensor_codec.encode(delta() if tensors is None else tensors, metadata)


REFUSED = {
    "not safetensors": b"1234567",
    "integer delta": _body({"x": np.zeros(2, np.int32)}),
    "no ticket": _body(ticket=None),
    "unknown key": _body(epochs="3"),
    "base version not an integer": _body(base_version="v1"),
    "base version past 2**31": _body(base_version=str(2 ** 31)),
    "empty ticket": _body(ticket=""),
    "ticket of 129 characters": _body(ticket="t" * 129),
    "short client id": _body(client_id="abc"),
    "zero examples": _body(num_examples="0"),
    "too many examples": _body(num_examples="1001"),
    "fractional examples": _body(num_examples="3.5"),
    "NaN loss": _body(loss_before="NaN"),
    "negative loss": _body(loss_after="-1"),
    "overflowing loss": _body(loss_after="1e400"),
    "loss with underscore": _body(loss_after="1_0"),
    "loss with a space": _body(loss_after=" 1"),
    "loss past 1000": _body(loss_after="1000.5"),
    "Q8 without scale": _body({"x": np.zeros(3, np.int8)}),
    "Q8 scale of wrong shape": _body({"x": np.zeros(65, np.int8), "x#scale": np.ones(1, np.float32)}),
    "Q8 scale not F32": _body({"x": np.zeros(3, np.int8), "x#scale": np.ones(1, np.float16)}),
    "Q8 NaN scale": _body({"x": np.zeros(3, np.int8), "x#scale": np.array([np.nan], np.float32)}),
    "Q8 infinite scale": _body({"x": np.zeros(3, np.int8), "x#scale": np.array([-np.inf], np.float32)}),
    "Q8 negative scale": _body({"x": np.zeros(3, np.int8), "x#scale": np.array([-1.0], np.float32)}),
    "scale without its tensor": _body({"x": np.zeros(3, np.int8), "x#scale": np.ones(1, np.float32),
                                       "y#scale": np.ones(1, np.float32)}),
    "scale of an F32 tensor": _body({"x": np.zeros(3, np.float32), "x#scale": np.ones(1, np.float32)}),
    "Q8 mixed with F32": _body({"x": np.zeros(3, np.int8), "x#scale": np.ones(1, np.float32),
                                "y": np.zeros(2, np.float32)}),
    "F16 mixed with F32": _body({"x": np.zeros(3, np.float16), "y": np.zeros(2, np.float32)}),
    "a scale of a scale": _body({"x": np.zeros(3, np.int8), "x#scale": np.ones(1, np.float32),
                                 "x#scale#scale": np.ones(1, np.float32)}),
    "Q8 scale of no dimension": _body({"x": np.zeros(3, np.int8), "x#scale": np.array(1.0, np.float32)}),
}


@pytest.mark.parametrize("body", REFUSED.values(), ids=REFUSED.keys())
def test_both_codecs_refuse_with_the_same_code(module_page, body):
    with pytest.raises(UpdateFormatError) as caught:
        decode_update(body, MAX_EXAMPLES)
    assert module_page.evaluate(DECODE, [list(body), MAX_EXAMPLES]) == {"code": caught.value.code}
