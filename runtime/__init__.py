"""What a client runs: the bundle's tokenizer and its ONNX graphs in onnxruntime (no torch).

``Completer`` suggests, ``LocalTrainer`` fine-tunes; the browser's twins are
web_client/completer.js and web_client/trainer.js.
"""
