"""NIfTI and BIDS collections into the research catalog (``mrifoundry ingest``; docs/ingest.md)."""
from mrifoundry.tasks.curation.ingest.ingest import IngestParams, ingest_collection

__all__ = ["IngestParams", "ingest_collection"]
