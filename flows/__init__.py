"""Prefect flows: wiring only; stage logic lives in tasks/."""
