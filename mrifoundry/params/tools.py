"""The command's tool verbs (no flow): the same shape, so the CLI is made the same way."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from mrifoundry.params.base import OUT, Params

class SqlParams(Params):
    """``sql``: a read-only query on the research catalog."""

    query: str = Field(description="SQL on the catalog's views (docs/catalog.md)")
    out: str | None = OUT
    format: Literal["table", "csv", "json"] = Field("table", description="output format")
    unrestricted: bool = Field(False, description="lift the research-zone confinement (power users: the query can "
                                                  "then read and write any file, the restricted zone included)")


class OverlapParams(Params):
    """``overlap``: pretraining series (SQL returning series_id) that share patients with a downstream dataset."""

    query: str = Field(description="SQL returning series_id")
    dataset_id: str = Field(description="downstream dataset of the catalog")
    out: str | None = OUT
    sql: bool = Field(False, description="also print the SQL that excludes the overlapping patients")


class ExportBidsParams(Params):
    """``export-bids``: the anatomical volumes of a query as a BIDS dataset."""

    dest: str = Field(description="a new, empty folder")
    out: str | None = OUT
    query: str = Field("SELECT series_id FROM series WHERE status = 'ok'", description="SQL returning series_id")
    name: str = Field("mrifoundry export", description="dataset_description.json Name")
    check: bool = Field(False, description="run bids-validator-deno on the result (exit 1 on an error)")


class SampleParams(Params):
    """``sample``: generate the embedded sample archive."""

    out: str | None = Field(None, description="where (default HOME/sample)")
    seed: int = Field(0, description="generator seed")
    force: bool = Field(False, description="regenerate even if it exists")


class PhiAuditParams(Params):
    """``phi-audit``: search every restricted-zone identifier outside it (exit 1 on a hit)."""

    out: str = Field(description="output root of the curation")
    reports: str | None = Field(None, description="the report export, to also search report-text fragments")


class CatalogDocsParams(Params):
    """``catalog-docs``: write docs/catalog.md from catalog/schema.py."""

    path: str = Field("docs/catalog.md", description="the file to write (relative to the current folder)")
    check: bool = Field(False, description="only compare (exit 1 when out of date)")


class WhereParams(Params):
    """``where``: where this installation keeps its state, rules and deployment files."""


class ReviewParams(Params):
    """``review``: import the decisions exported from the QC review page, or (re)build the page."""

    action: Literal["import", "build"] = Field(description="import FILE into review_decisions (then rebuild the "
                                                           "page), or build research/qc/index.html")
    file: str | None = Field(None, description="the decisions the page exported (review-<run>.json or .csv)")
    out: str | None = OUT
    rater: str | None = Field(None, description="rater name for every imported row (default: the file's)")
    volumes: int = Field(2000, ge=0, description="series with a 3D viewer copy in the page (outliers first)")
