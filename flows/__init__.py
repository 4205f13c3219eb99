"""Prefect flows: each wraps its pipeline's plain runner in tasks/ (signature from its params model,
flows/wrap.py); the mrifoundry command (cli.py)."""
