"""Every stage and every pipeline's plain runner, one package per domain, each importing only those
before it: curation → ingest → data → pretraining → evaluation. No Prefect here (flows/ wraps them)."""
