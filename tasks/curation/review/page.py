"""The offline QC review page of a research root: ``research/qc/index.html`` and its folder.

Everything comes from the research catalog (opaque ids, cleaned descriptions, metrics): the page
holds nothing the catalog does not. Layout (the contract with static/app.js):

    qc/index.html, qc/assets/{app.js, app.css, niivue.js}   the page (static/, vendor/ when built)
    qc/data.js        window.MRIF_QC: run, metrics, reason meanings, one record per series
    qc/thumbs/        three-plane thumbnails, written by the convert stage
    qc/volumes/       8-bit viewer copies (viewer_volumes.py), outliers first, at most max_volumes

Re-building keeps up-to-date volume copies and removes the copies and thumbnails of series no
longer in the catalog (a quarantined exam's, say).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import shutil
from pathlib import Path

from mrifoundry import code_version
from mrifoundry.atomic import atomic_path
from mrifoundry.catalog.reasons import REASONS
from mrifoundry.catalog.schema_quality import BETTER, IQM_COLUMNS
from mrifoundry.catalog.views import connect
from mrifoundry.tasks.curation.review.viewer_volumes import write_viewer_volume

__all__ = ["LABELS", "STATIC", "build_review_page", "page_id", "page_records"]

STATIC = Path(__file__).resolve().parent / "static"
LABELS = {"snr": "SNR", "snr_dietrich": "SNR (Dietrich)", "cnr": "CNR", "cjv": "CJV", "efc": "EFC", "fber": "FBER",
          "qi1": "QI1", "bright2max": "bright/max", "blank_slices": "blank slices", "saturated_fraction": "saturated",
          "slice_jump": "slice jump", "ghost_ratio": "ghost ratio"}
METRICS = tuple(name for name, _ in IQM_COLUMNS)

_SQL = f"""
SELECT r.series_id, r.exam_id, coalesce(r.body_part, e.body_part) AS body_part, r.sequence_type, r.orientation,
       r.manufacturer, r.model, r.field_strength, r.series_description, r.image_set, r.status, r.reason, r.nifti_shape,
       r.nifti_file, q.thumb_path, q.series_id IS NOT NULL AS measured,
       {', '.join(f'q.{m}' for m in METRICS)}, {', '.join(f'z.{m}_z' for m in METRICS)},
       o.flags, d.decision, d.note, d.rater, d.decided_at
FROM series r JOIN exams e USING (exam_id)
LEFT JOIN series_quality q USING (series_id)
LEFT JOIN series_iqm_z z USING (series_id)
LEFT JOIN quality_outliers o USING (series_id)
LEFT JOIN series_decisions d USING (series_id)
ORDER BY (o.flags IS NULL), r.exam_id, r.series_id
"""


def _num(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def page_records(research: Path) -> list[dict]:
    """One record per series of the catalog (static/app.js's ``series`` entries), outliers first."""
    con = connect(research)
    try:
        cur = con.execute(_SQL)
        cols = [c[0] for c in cur.description]
        rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    finally:
        con.close()
    out = []
    for r in rows:
        thumb = r["thumb_path"]
        has_thumb = bool(thumb) and (research / thumb).is_file()
        out.append({
            "series_id": r["series_id"], "exam_id": r["exam_id"], "body_part": r["body_part"],
            "sequence_type": r["sequence_type"], "orientation": r["orientation"], "manufacturer": r["manufacturer"],
            "model": r["model"], "field_strength": _num(r["field_strength"]),
            "series_description": r["series_description"], "image_set": r["image_set"] or None,
            "status": r["status"], "reason": r["reason"],
            "nifti_shape": r["nifti_shape"],
            "thumb": f"thumbs/{Path(thumb).name}" if has_thumb else None,
            "volume": None, "_nifti": r["nifti_file"] if r["status"] == "ok" else None,
            "iqm": {m: _num(r[m]) for m in METRICS} if r["measured"] else None,
            "z": {m: _num(r[f"{m}_z"]) for m in METRICS} if r["measured"] else None,
            "outlier": bool(r["flags"]), "flags": list(r["flags"] or []),
            "decision": None if r["decision"] is None else {
                "decision": r["decision"], "note": r["note"] or "", "rater": r["rater"],
                "decided_at": r["decided_at"].astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")},
        })
    return out


def page_id(research: Path) -> str:
    """A stable opaque id of the output folder (a hash of its path: no path in the page)."""
    return "qc-" + hashlib.sha256(str(Path(research).resolve()).encode()).hexdigest()[:12]


def _copy_static(qc: Path) -> bool:
    (qc / "assets").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(STATIC / "index.html", qc / "index.html")
    for name in ("app.js", "app.css"):
        shutil.copyfile(STATIC / name, qc / "assets" / name)
    vendor = STATIC / "vendor" / "niivue.js"
    if vendor.is_file():
        shutil.copyfile(vendor, qc / "assets" / "niivue.js")
    else:
        (qc / "assets" / "niivue.js").unlink(missing_ok=True)
    return vendor.is_file()


def build_review_page(research: Path, run_id: str | None = None, max_volumes: int = 2000,
                      progress=None) -> dict:
    """Write ``research/qc/`` (module docstring); returns {"page", "series", "volumes", "viewer"}."""
    research = Path(research)
    qc = research / "qc"
    bundled = _copy_static(qc)
    records = page_records(research)
    vols = qc / "volumes"
    vols.mkdir(parents=True, exist_ok=True)
    wanted = [r for r in records if r["_nifti"] and Path(r["_nifti"]).is_file()][:max(0, max_volumes)]
    keep = set()
    for i, r in enumerate(wanted, 1):   # outliers first (the SQL's order): they are the ones to look at
        js = vols / f"{r['series_id']}.js"
        write_viewer_volume(Path(r["_nifti"]), js, r["series_id"])
        r["volume"] = f"volumes/{js.name}"
        keep.add(js.name)
        if progress and (i % 50 == 0 or i == len(wanted)):
            progress(f"review page: viewer volumes {i}/{len(wanted)}")
    for stale in vols.glob("*.js"):
        if stale.name not in keep:
            stale.unlink()
    ids = {r["series_id"] for r in records}
    for stale in (qc / "thumbs").glob("*.png"):   # of series no longer catalogued (quarantined, dropped)
        if stale.stem not in ids:
            stale.unlink()
    for r in records:
        r.pop("_nifti")
    data = {
        "format": "mrifoundry-qc/1",
        # run_id keys the raters' unsaved decisions in the browser and names the export: one id per
        # output folder (not per curation run), so a rebuilt or re-run page keeps them
        "run": {"run_id": page_id(research), "curation_run": run_id, "n_series": len(records),
                "code_version": code_version(),
                "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")},
        "metrics": [{"name": m, "label": LABELS.get(m, m), "better": BETTER[m], "doc": doc} for m, doc in IQM_COLUMNS],
        "reasons": {code: meaning for code, (_, _, meaning) in REASONS.items()},
        "series": records,
    }
    with atomic_path(qc / "data.js") as tmp:
        # </ escaped: a description holding "</script>" cannot end a script element early
        Path(tmp).write_text("window.MRIF_QC = " + json.dumps(data, separators=(",", ":")).replace("</", "<\\/") + ";\n")
    return {"page": str(qc / "index.html"), "series": len(records), "volumes": len(keep), "viewer": bundled}
