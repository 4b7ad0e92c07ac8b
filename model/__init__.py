"""The network and its export: the URL LM (lm.py), its ONNX graphs (graphs.py), fedurl-export.

The only package that imports torch. It writes bundles (formats.bundle) that runtime/ and the
browser run; nothing outside model/ imports it.
"""
