"""The production start: ``fedurl-deploy`` runs the aggregation server behind nginx (front.py).

May import ``server`` (the app, its settings and its file rules) and ``formats``; nothing imports it.
"""
