"""The Python client of the update protocol (docs/PROTOCOL.md): what simulated clients and tests speak."""
