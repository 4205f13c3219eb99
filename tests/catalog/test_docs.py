from pathlib import Path

from mrifoundry.catalog.docs import render_catalog_doc
from mrifoundry.catalog.reasons import REASONS
from mrifoundry.catalog.schema import ALL_TABLES

DOC = Path(__file__).resolve().parents[2] / "docs" / "catalog.md"


def test_catalog_doc_is_generated_from_schema():
    assert DOC.read_text() == render_catalog_doc(), "run `make docs` (mrifoundry catalog-docs)"


def test_every_column_and_reason_documented():
    text = DOC.read_text()
    for t in ALL_TABLES:
        for c in t.columns:
            assert f"| `{c.name}` |" in text and c.description
    for code in REASONS:
        assert f"| `{code}` |" in text
