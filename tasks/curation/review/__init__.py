"""The offline QC review page (page.py, viewer_volumes.py, static/) and the import of its
decisions into the catalog (decisions.py)."""
