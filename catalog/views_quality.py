"""The quality views of the research catalog (created with the others by catalog/views.py).

- ``series_iqm_z``: every metric of series_quality with its robust z-score within the series'
  group — (manufacturer, model, field strength, sequence type, body part, metric version) — as
  (x − median) / max(1.4826 · MAD, :data:`SPREAD_FLOOR` · |median|). A group of fewer than
  :data:`MIN_GROUP` series, or a metric whose MAD is 0 in the group, has no z (NULL): too few
  series say nothing about what is usual.
- ``quality_outliers``: the series with at least one flag — ``<metric>_high``/``_low`` where
  |z| > :data:`Z_CUT` (Iglewicz and Hoaglin's cut-off for the modified z-score) on the metric's
  worse side (catalog/schema_quality.py::BETTER: a series with an unusually high SNR is not
  flagged; both sides where neither is better), and the absolute
  checks ``blank_slices`` (any blank slice inside the body) and ``saturated`` (clipping).
- ``series_decisions``: the latest review decision per series (review_decisions keeps them all).
- ``training_volumes``: converted series with a NIfTI, less those whose latest decision is
  exclude (training_slices leaves them out the same way).
"""
from __future__ import annotations

from mrifoundry.catalog.schema_quality import BETTER, IQM_COLUMNS

__all__ = ["EXCLUDED", "MIN_GROUP", "SATURATED_CUT", "SPREAD_FLOOR", "Z_CUT", "quality_views"]

MIN_GROUP = 5
Z_CUT = 3.5
#: the spread never counts as less than this share of the group's |median|: in a group of
#: near-identical series (one protocol, one scanner, a phantom) the MAD is tiny and a 10 %
#: difference would otherwise score z ≈ 20
SPREAD_FLOOR = 0.02
SATURATED_CUT = 0.005      # share of foreground voxels at the maximum: real images hold a handful
METRICS = tuple(name for name, _ in IQM_COLUMNS)
#: metrics flagged by an absolute cut, not by z: a count of clipped voxels or blank slices is
#: nearly always tiny or zero, so its MAD is ~0 and any z would be noise
ABSOLUTE = ("blank_slices", "saturated_fraction")
GROUP = ("manufacturer", "model", "field_strength", "sequence_type", "body_part", "iqm_version")

#: series ids a rater excluded (latest decision), for the training views
EXCLUDED = "(SELECT series_id FROM series_decisions WHERE decision = 'exclude')"


def _z(m: str) -> str:
    spread = f"greatest(1.4826 * {m}_mad, {SPREAD_FLOOR} * abs({m}_med))"
    return f"CASE WHEN group_n >= {MIN_GROUP} AND {m}_mad > 0 THEN ({m} - {m}_med) / {spread} END AS {m}_z"


def _flag(m: str) -> str:
    """A flag where the metric is |z| > Z_CUT on its worse side (both sides when neither is better)."""
    high, low = f"WHEN {m}_z > {Z_CUT} THEN '{m}_high'", f"WHEN {m}_z < -{Z_CUT} THEN '{m}_low'"
    cases = {"higher": low, "lower": high, None: f"{high} {low}"}[BETTER[m]]
    return f"CASE {cases} END"


def quality_views() -> list[str]:
    """CREATE VIEW statements, in dependency order (after the table views)."""
    stats = ", ".join(f"median({m}) OVER g AS {m}_med, mad({m}) OVER g AS {m}_mad" for m in METRICS)
    z = ", ".join(_z(m) for m in METRICS)
    flags = ", ".join(_flag(m) for m in METRICS if m not in ABSOLUTE)
    return [
        "CREATE VIEW series_decisions AS SELECT * FROM review_decisions "
        "QUALIFY row_number() OVER (PARTITION BY series_id ORDER BY decided_at DESC, imported_at DESC) = 1",
        f"""CREATE VIEW series_iqm_z AS
WITH q AS (
  SELECT q.*, r.manufacturer, r.model, r.field_strength, r.sequence_type,
         coalesce(r.body_part, e.body_part) AS body_part
  FROM series_quality q JOIN series r USING (series_id) JOIN exams e ON e.exam_id = q.exam_id
  WHERE r.status = 'ok'),
s AS (SELECT *, count(*) OVER g AS group_n, {stats} FROM q WINDOW g AS (PARTITION BY {', '.join(GROUP)}))
SELECT series_id, exam_id, {', '.join(GROUP)}, group_n, {', '.join(METRICS)}, {z} FROM s""",
        f"""CREATE VIEW quality_outliers AS
WITH f AS (
  SELECT *, list_filter([{flags},
      CASE WHEN blank_slices > 0 THEN 'blank_slices' END,
      CASE WHEN saturated_fraction > {SATURATED_CUT} THEN 'saturated' END], lambda x: x IS NOT NULL) AS flags
  FROM series_iqm_z)
SELECT * FROM f WHERE len(flags) > 0""",
        f"CREATE VIEW training_volumes AS SELECT * FROM series "
        f"WHERE status = 'ok' AND nifti_path IS NOT NULL AND series_id NOT IN {EXCLUDED}",
    ]
