"""The torch-free core of formats shared by the server, the Python clients and the browser's twins.

Bundles and manifests, the safetensors codec, the update codec, URL normalisation and durable
writes. Nothing here imports another fedurl package: everything else may import it.
"""
