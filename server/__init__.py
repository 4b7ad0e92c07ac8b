"""fedurl aggregation server: ships the global model, turns client deltas into the next one."""
