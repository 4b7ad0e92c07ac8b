"""Open a bundle's graphs in onnxruntime and its tokenizer: the one place a client loads them."""

from __future__ import annotations

import onnxruntime as ort

from formats.bundle import Bundle
from runtime.tokenizer import Tokenizer


def open_session(bundle: Bundle, graph: str, threads: int = 1) -> ort.InferenceSession:
    """An onnxruntime CPU session for one of the manifest's graphs ("infer", "train_step")."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    path = bundle.path(bundle.manifest["graphs"][graph]["file"])
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def open_tokenizer(bundle: Bundle) -> Tokenizer:
    """The bundle's sentencepiece tokenizer."""
    return Tokenizer.load(bundle.path(bundle.manifest["tokenizer"]["model"]))
