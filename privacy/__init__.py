"""Private aggregation: secure aggregation (SecAgg / SecAgg+) and differential-privacy accounting.

Pure logic, no HTTP: the server's round coordinator and the clients carry the bytes. Imports
nothing of ours, so ``server``, ``client`` and ``study`` may all use it. The browser twin is
``web_client/secagg.js``; both are tested bit for bit on the same bytes (tests/privacy).
"""
