"""Offline studies that compose the parts: evaluation, federated simulation, the loopback server helper.

Imports formats, runtime, client and server; nothing imports study (the server never does).
"""
