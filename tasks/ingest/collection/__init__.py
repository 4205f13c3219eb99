"""NIfTI and BIDS collections into the research catalog (``mrifoundry ingest``; docs/ingest.md)."""
from mrifoundry.tasks.ingest.collection.ingest import dataset_of, ingest_collection, layout_of

__all__ = ["dataset_of", "ingest_collection", "layout_of"]
