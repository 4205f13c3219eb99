"""The five per-exam stages of the curation DAG, as plain functions (each wrapped by
tasks/curation/stage_guard.py::guarded).

retrieve → deid → continuity → convert → catalog. Each reads the previous stage's artifact
and writes its own; Prefect wraps each in a thin task (flows/curate.py).
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
import threading
from collections import Counter
from pathlib import Path


from mrifoundry.catalog.store import write_exam_parts
from mrifoundry import code_version
from mrifoundry.errors import CurationError, InsufficientDiskSpace, RejectedItem, is_disk_full
from mrifoundry.params import CurateParams
from mrifoundry.tasks.curation import exam_reads
from mrifoundry.tasks.curation.archive import open_archive, walk_limits
from mrifoundry.tasks.curation.continuity.checks import ContinuityConfig, Volume, check_series
from mrifoundry.tasks.curation.convert.nifti import NiftiConfig, volumes_to_nifti
from mrifoundry.tasks.curation.convert.png import volume_to_png
from mrifoundry.tasks.curation.convert.reads import SharedReads
from mrifoundry.tasks.curation.convert.sidecar import write_sidecars
from mrifoundry.tasks.curation.quality.series import series_quality
from mrifoundry.tasks.curation.deid.deidentify import DeidConfig, PseudonymStore, deidentify_exam
from mrifoundry.tasks.curation.selection import exams as selection
from mrifoundry.atomic import replace_dir
from mrifoundry.tasks.curation.stage_guard import StageOutcome, failure_message, guarded, log_restricted, log_text
from mrifoundry.tasks.curation.workspace import Workspace

_ARCHIVES: dict[tuple[str, str], object] = {}
_ARCHIVE_LOCK = threading.Lock()


def _archive(ws: Workspace, params: CurateParams):
    key = (params.archive, str(ws.restricted))
    with _ARCHIVE_LOCK:
        if key not in _ARCHIVES:
            _ARCHIVES[key] = open_archive(params.archive, ws.restricted, workers=1, limits=walk_limits(params))
        arch = _ARCHIVES[key]
        # the selection step of this run built the index: retrieval only reads it
        getattr(arch, "use_existing_index", lambda: None)()
        return arch


@guarded("retrieve")
def run_retrieve(ws: Workspace, params: CurateParams, exam_id: str) -> StageOutcome:
    """Find the exam in the archive and list its files (restricted artifact)."""
    sel = selection.lookup(ws, exam_id)
    arch = _archive(ws, params)
    key = sel["study_key"]
    studies = arch.find(key)
    if not studies and key.startswith("uid:"):  # archives that look up accession numbers only (PACS)
        studies = [s for s in arch.studies() if s.key == key]
    if not studies:
        raise RejectedItem(exam_id, "accession_not_found", "no study with this accession number in the archive")
    files = [str(f) for s in studies for f in arch.fetch(s, ws.staging(exam_id))]
    ws.write_artifact(exam_id, "retrieve", {"files": files, "patient_key": studies[0].patient_mrn},
                      zone="restricted")
    ws.write_artifact(exam_id, "exam", {"exam_id": exam_id, "protocol": sel["protocol"],
                                        "body_part": sel["body_part"], "source": sel["source"]})
    return StageOutcome(exam_id, "retrieve", "done", counts={"files": len(files)})


@guarded("deid")
def run_deid(ws: Workspace, params: CurateParams, exam_id: str) -> StageOutcome:
    """De-identify the exam into research/dicom/<exam_id>/<series_id>/."""
    got = ws.read_artifact(exam_id, "retrieve", zone="restricted", made_by="retrieve")
    store = PseudonymStore(ws.restricted / "pseudonyms.sqlite", ws.salt)
    cfg = DeidConfig(salt=ws.salt)
    out_dir = ws.dicom_dir(exam_id)
    tmp = out_dir.with_name(f".{exam_id}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    res = deidentify_exam([Path(f) for f in got["files"]], tmp, exam_id, cfg, store)
    tmp.mkdir(parents=True, exist_ok=True)  # every series rejected: an empty folder still replaces the old one
    replace_dir(tmp, out_dir)
    ws.ledger.forget_exam_stage(exam_id, "deid")
    for rej in res.rejected:
        if rej.failed:   # an error in this series alone: its traceback to the restricted log, the exam goes on
            log_text(ws, exam_id, "deid", rej.series_id, rej.traceback or "")
            ws.ledger.record(rej.series_id, "deid", "failed", exam_id=exam_id, item_kind="series",
                             reason=rej.reason, message=f"{rej.detail} (traceback in restricted/logs/errors.log)")
            continue
        if rej.instance:   # one source file dropped (e.g. an undecodable mosaic); its series goes on
            ws.ledger.record(f"{rej.series_id}/{rej.instance}", "deid", "rejected", exam_id=exam_id,
                             item_kind="instance", reason=rej.reason, message="file dropped, series kept")
            continue
        ws.ledger.record(rej.series_id or f"{exam_id}/unattributed", "deid", "rejected", exam_id=exam_id,
                         item_kind="series", reason=rej.reason, message=f"{rej.n_files} file(s)")
    series = []
    for s in res.series:
        files = [ws.rel(out_dir / Path(f).relative_to(tmp)) if Path(f).is_relative_to(tmp) else ws.rel(f)
                 for f in s.files]
        series.append({"series_id": s.series_id, "files": files, "image_set": s.image_set,
                       "acquisition": s.acquisition})
        ws.ledger.record(s.series_id, "deid", "done", exam_id=exam_id, item_kind="series",
                         message=f"{len(files)} file(s)")
    ws.write_artifact(exam_id, "deid", {
        "patient_id": res.patient_id,
        "study_date": res.study_date.isoformat() if res.study_date else None,
        "study_description": getattr(res, "study_description", None),
        "series": series,
        "rejected": [{"series_id": r.series_id, "reason": r.reason, "n_files": r.n_files, "instance": r.instance,
                      "failed": r.failed} for r in res.rejected],
    })
    n_failed = sum(r.failed for r in res.rejected)
    return StageOutcome(exam_id, "deid", "done", counts={"series": len(series), "rejected": len(res.rejected),
                                                          **({"series_failed": n_failed} if n_failed else {})})


@guarded("continuity")
def run_continuity(ws: Workspace, params: CurateParams, exam_id: str) -> StageOutcome:
    """Check each de-identified series forms one continuous volume (or a clean 4D stack)."""
    deid = ws.read_artifact(exam_id, "deid", made_by="deid")
    cfg = ContinuityConfig(min_slices=params.min_slices)
    ws.ledger.forget_exam_stage(exam_id, "continuity")
    out, n_ok = {}, 0
    for s in deid["series"]:
        sid = s["series_id"]
        try:
            chk = check_series(sid, [ws.research / f for f in s["files"]], cfg)
        except Exception as e:  # noqa: BLE001 — one series must not take its exam down
            if is_disk_full(e):
                raise
            log_restricted(ws, exam_id, "continuity", sid)
            ws.ledger.record(sid, "continuity", "failed", exam_id=exam_id, item_kind="series",
                             reason="continuity_error", message=failure_message(e))
            out[sid] = {"status": "failed", "reason": "continuity_error", "meta": None, "volumes": []}
            continue
        for path, reason in chk.removed:
            ws.ledger.record(f"{sid}/{Path(path).stem}", "continuity", "rejected", exam_id=exam_id,
                             item_kind="instance", reason=reason, message="instance removed, series kept")
        status = "done" if chk.status == "ok" else "rejected"
        ws.ledger.record(sid, "continuity", status, exam_id=exam_id, item_kind="series", reason=chk.reason,
                         message=chk.message[:500] if chk.message else None)
        n_ok += chk.status == "ok"
        out[sid] = {
            "status": chk.status, "reason": chk.reason, "meta": chk.meta,
            "volumes": [{"temporal_index": v.temporal_index, "files": [ws.rel(f) for f in v.files],
                         "positions": list(map(float, v.positions))} for v in chk.volumes],
        }
    ws.write_artifact(exam_id, "continuity", {"series": out})
    n_failed = sum(s["status"] == "failed" for s in out.values())
    return StageOutcome(exam_id, "continuity", "done", counts={"series_ok": n_ok, "series": len(out),
                                                                **({"series_failed": n_failed} if n_failed else {})})


@guarded("convert")
def run_convert(ws: Workspace, params: CurateParams, exam_id: str) -> StageOutcome:
    """PNG slices (per-slice min-max) and a RAS, resampled NIfTI per continuous series."""
    cont = ws.read_artifact(exam_id, "continuity", made_by="continuity")
    ncfg = NiftiConfig(voxel_size_mm=params.voxel_size_mm, shape=params.nifti_shape, timepoints=params.nifti_timepoints)
    deid = ws.read_artifact(exam_id, "deid", made_by="deid")
    acquisitions = {s["series_id"]: s.get("acquisition") or {} for s in deid["series"]}
    signatures = _acquisition_signatures(deid, cont)
    ws.ledger.forget_exam_stage(exam_id, "convert")
    out, rejected, n_slices, failed = {}, {}, 0, 0
    affines: dict = {}   # of this run's NIfTIs, for the copy check
    for sid, s in cont["series"].items():
        if s["status"] != "ok":
            continue
        vols = [Volume(temporal_index=v["temporal_index"], files=[ws.research / f for f in v["files"]],
                       positions=v["positions"]) for v in s["volumes"]]
        rec: dict = {"slices": [], "nifti": None}
        # the NIfTI's time point is read once, by the PNG writer, and its datasets handed on
        read = SharedReads(vols[len(vols) // 2].files if params.write_png and params.write_nifti else ())
        try:
            if params.write_png:
                final = ws.png_dir(exam_id, sid)
                tmp = final.with_name(f".{sid}.tmp")
                if tmp.exists():
                    shutil.rmtree(tmp)
                tmp.mkdir(parents=True)
                slices = [sl for v in vols for sl in volume_to_png(v, tmp, read)]
                replace_dir(tmp, final)
                rec["slices"] = [{
                    "temporal_index": sl.temporal_index, "slice_index": sl.index, "position_mm": sl.position_mm,
                    "png_path": ws.rel(final / Path(sl.path).name), "width": sl.width, "height": sl.height,
                    "min_value": float(sl.min_value), "max_value": float(sl.max_value)} for sl in slices]
                n_slices += len(slices)
            if params.write_nifti:
                nrec = volumes_to_nifti(vols, ws.nifti_path(exam_id, sid), ncfg, read)
                rec["nifti"] = {"path": ws.rel(nrec.path), "shape": list(nrec.shape), "zooms": list(nrec.zooms),
                                "axcodes": nrec.axcodes, "converter": nrec.converter,
                                "converter_version": nrec.converter_version, "params": nrec.params,
                                "content_sha256": nrec.content_sha256,
                                "timepoint": len(vols) // 2 if len(nrec.params["timepoints"]) == 1 else None}
                extra = write_sidecars(nrec.path, vols, nrec.params["timepoints"], acquisitions.get(sid, {}),
                                       nrec.affine)
                affines[sid] = nrec.affine
                rec["nifti"]["sidecar"] = ws.rel(extra.pop("sidecars")[0])
                rec["nifti"].update(extra)
                rec["quality"] = _quality(ws, exam_id, sid, nrec, (s["meta"] or {}).get("orientation"),
                                          extra.get("phase_encoding_direction"))
        except RejectedItem as e:   # the converter's validation refused the series: rows kept, reason named
            rejected[sid] = e.reason
            shutil.rmtree(ws.png_dir(exam_id, sid), ignore_errors=True)   # no slices of a rejected series
            ws.ledger.record(sid, "convert", "rejected", exam_id=exam_id, item_kind="series",
                             reason=e.reason, message=e.message)
            continue
        except Exception as e:  # noqa: BLE001 — one series must not sink the exam
            shutil.rmtree(ws.png_dir(exam_id, sid).with_name(f".{sid}.tmp"), ignore_errors=True)
            if is_disk_full(e):   # stop: the guard ledgers the exam and sweeps its temp files
                raise InsufficientDiskSpace(exam_id, "disk_full", "no space left while converting") from e
            log_restricted(ws, exam_id, "convert", sid)
            failed += 1
            reason = e.reason if isinstance(e, CurationError) else "convert_error"
            ws.ledger.record(sid, "convert", "failed", exam_id=exam_id, item_kind="series",
                             reason=reason, message=failure_message(e.__cause__ or e))
            continue
        kept = _copy_of(sid, rec, out, signatures, affines)
        if kept is not None:
            nii = ws.nifti_path(exam_id, sid)
            for path in [nii] + [nii.with_name(sid + x) for x in (".json", ".bval", ".bvec", "_aslcontext.tsv")]:
                path.unlink(missing_ok=True)
            shutil.rmtree(ws.png_dir(exam_id, sid), ignore_errors=True)
            ws.thumb_path(sid).unlink(missing_ok=True)
            n_slices -= len(rec["slices"])
            rejected[sid] = "duplicate_series"
            ws.ledger.record(sid, "convert", "rejected", exam_id=exam_id, item_kind="series",
                             reason="duplicate_series", message=f"same voxels as series {kept}")
            continue
        ws.ledger.record(sid, "convert", "done", exam_id=exam_id, item_kind="series",
                         outputs=[x for x in [rec["nifti"] and rec["nifti"]["path"]] if x])
        out[sid] = rec
    ws.write_artifact(exam_id, "convert", {"series": out, "rejected": rejected})
    # a failed series has its own ledger row (rerun=failed redoes the exam); the others go on to the catalog
    return StageOutcome(exam_id, "convert", "done", counts={"series": len(out), "slices": n_slices,
                                                             **({"series_failed": failed} if failed else {})})


def _quality(ws: Workspace, exam_id: str, sid: str, nrec, orientation, ped) -> dict | None:
    """The series' quality record (tasks/curation/quality/series.py), or None with a failed ledger
    row ``<sid>/iqm`` when the metrics cannot be computed: the series stays converted, and
    rerun=failed recomputes them."""
    try:
        q = series_quality(nrec.data, nrec.zooms, orientation, ped, thumb_path=ws.thumb_path(sid))
    except Exception as e:  # noqa: BLE001 — metrics must never cost the conversion
        if is_disk_full(e):
            raise
        log_restricted(ws, exam_id, "convert", f"{sid}/iqm")
        ws.ledger.record(f"{sid}/iqm", "convert", "failed", exam_id=exam_id, item_kind="quality",
                         reason="iqm_error", message=failure_message(e))
        return None
    q["thumb_path"] = ws.rel(q["thumb_path"])
    return q


def _acquisition_signatures(deid: dict, cont: dict) -> dict[str, tuple]:
    """Per series: image set, time points, description and TR/TE/flip angle (synthetic exams
    repeat one set of pixels in series of other protocols: equal voxels alone are no copy)."""
    sets = {x["series_id"]: x.get("image_set") or "" for x in deid["series"]}
    keys = ("series_description", "repetition_time", "echo_time", "flip_angle")
    return {sid: (sets.get(sid), len(c["volumes"])) + tuple(
                round(v, 2) if isinstance(v, float) else v for v in ((c["meta"] or {}).get(k) for k in keys))
            for sid, c in cont["series"].items()}


def _copy_of(sid: str, rec: dict, converted: dict, signatures: dict, affines: dict) -> str | None:
    """The series already converted in this exam that ``sid`` copies (a classic and an enhanced
    export of one acquisition under two SeriesInstanceUIDs), or None: same voxels
    (content_sha256), shape, affine (the digest leaves it out) and acquisition signature.
    The loop runs in the continuity artifact's (series id) order and the copy converted first
    is kept: after deid the frames of an enhanced object are classic images, and nothing cheap
    and honest tells the two apart."""
    mine = rec["nifti"] or {}
    if not mine.get("content_sha256"):
        return None
    for other, r in converted.items():
        theirs = r["nifti"] or {}
        if (theirs.get("content_sha256") == mine["content_sha256"] and theirs["shape"] == mine["shape"]
                and signatures[other] == signatures[sid]
                and abs(affines[other] - affines[sid]).max() <= 0.05):
            return other
    return None


def _series_outcome(sid: str, checked: dict, converted: dict, refused: dict) -> tuple[str, str | None]:
    """(status, reason) of a series in the catalog: continuity's decision first, then convert's
    (a series continuity passed but convert neither wrote nor refused failed there)."""
    if checked["status"] != "ok":
        return ("failed" if checked["status"] == "failed" else "rejected"), checked["reason"]
    if sid in converted:
        return "ok", None
    if sid in refused:
        return "rejected", refused[sid]
    return "failed", "convert_error"


def _majority(values):
    vals = [v for v in values if v]
    return Counter(vals).most_common(1)[0][0] if vals else None


@guarded("catalog")
def run_catalog(ws: Workspace, params: CurateParams, exam_id: str) -> StageOutcome:
    """Write the exam's rows of exams/series/slices as Parquet parts (merged at the end of the run)."""
    exam = ws.read_artifact(exam_id, "exam", made_by="retrieve")
    deid = ws.read_artifact(exam_id, "deid", made_by="deid")
    cont = ws.read_artifact(exam_id, "continuity", made_by="continuity")
    converted = ws.read_artifact(exam_id, "convert", made_by="convert")
    conv, conv_rejected = converted["series"], converted.get("rejected", {})
    series_rows, slice_rows, quality_rows = [], [], []
    image_sets = {s["series_id"]: s.get("image_set", "") for s in deid["series"]}
    for r in deid["rejected"]:
        if r["series_id"] and not r.get("instance"):
            series_rows.append(dict(series_id=r["series_id"], exam_id=exam_id,
                                    status="failed" if r.get("failed") else "rejected", reason=r["reason"],
                                    dicom_dir=None))
    for sid, s in cont["series"].items():
        m = s["meta"] or {}
        c = conv.get(sid, {})
        n = c.get("nifti") or {}
        status, reason = _series_outcome(sid, s, conv, conv_rejected)
        series_rows.append(dict(
            series_id=sid, exam_id=exam_id, image_set=image_sets.get(sid, ""),
            status=status, reason=reason,
            series_description=m.get("series_description"), sequence_type=m.get("sequence_type"),
            orientation=m.get("orientation"), body_part=m.get("body_part"), contrast=m.get("contrast"),
            manufacturer=m.get("manufacturer"), model=m.get("model"), field_strength=m.get("field_strength"),
            repetition_time=m.get("repetition_time"), echo_time=m.get("echo_time"), flip_angle=m.get("flip_angle"),
            rows=m.get("rows"), cols=m.get("cols"), pixel_spacing_row=m.get("pixel_spacing_row"),
            pixel_spacing_col=m.get("pixel_spacing_col"), slice_thickness=m.get("slice_thickness"),
            slice_spacing=m.get("slice_spacing"), n_slices=m.get("n_slices"), n_timepoints=m.get("n_timepoints"),
            transfer_syntax=m.get("transfer_syntax"), dicom_dir=f"dicom/{exam_id}/{sid}",
            nifti_path=n.get("path"), nifti_shape="x".join(map(str, n["shape"])) if n else None,
            nifti_zooms="x".join(f"{z:g}" for z in n["zooms"]) if n else None,
            nifti_timepoint=n.get("timepoint"), converter=n.get("converter"),
            converter_version=n.get("converter_version"),
            conversion_params=json.dumps(n["params"], sort_keys=True) if n else None,
            content_sha256=n.get("content_sha256"), sidecar_path=n.get("sidecar"),
            phase_encoding_direction=n.get("phase_encoding_direction"), multiband_factor=n.get("multiband_factor"),
            b_values=n.get("b_values"), asl_context=n.get("asl_context")))
        if status == "ok" and c.get("quality"):
            quality_rows.append(dict(series_id=sid, exam_id=exam_id, **c["quality"]))
        for sl in c.get("slices", []):
            slice_rows.append(dict(slice_id=f"{sid}_t{sl['temporal_index']:02d}_z{sl['slice_index']:04d}",
                                   series_id=sid, exam_id=exam_id, **sl))
    ok_meta = [cont["series"][sid]["meta"] or {} for sid in conv]
    exam_row = dict(
        exam_id=exam_id, patient_id=deid["patient_id"],
        protocol=exam.get("protocol") or deid.get("study_description"),
        body_part=exam.get("body_part") or _majority(m.get("body_part") for m in ok_meta),
        study_date=dt.date.fromisoformat(deid["study_date"]) if deid.get("study_date") else None,
        modality="MR", n_series=len(series_rows), n_series_ok=len(conv), n_slices=len(slice_rows),
        source=exam.get("source"), curated_at=dt.datetime.now(dt.timezone.utc), code_version=code_version())
    parts = write_exam_parts(ws.research, exam_id,
                             {"exams": [exam_row], "series": series_rows, "slices": slice_rows,
                              "series_quality": quality_rows})
    return StageOutcome(exam_id, "catalog", "done",
                        counts={"series": len(series_rows), "slices": len(slice_rows), "parts": len(parts)})


STAGES = {"retrieve": run_retrieve, "deid": run_deid, "continuity": run_continuity, "convert": run_convert,
          "catalog": run_catalog}


def curate_exam(ws: Workspace, params: CurateParams, exam_id: str) -> list[StageOutcome]:
    """All stages of one exam in order (the CLI and tests use this; the flow runs them as tasks)."""
    with exam_reads.exam_scope():   # one parse of each de-identified file (tasks/curation/exam_reads.py)
        return [fn(ws, params, exam_id) for fn in STAGES.values()]
