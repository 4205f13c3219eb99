"""The offline QC review page in a real browser (issue 23)."""
