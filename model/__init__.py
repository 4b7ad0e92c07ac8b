"""fedurl's model core: URL normalisation, tokenizer, the tiny LM, its ONNX graphs and bundles.

Only ``lm``, ``graphs`` and ``export`` import torch; everything else (bundle, weights,
complete, evaluate) runs on numpy and onnxruntime, so the server never needs torch.
"""
