"""Entry point: plan the sample, write reports.csv, render exams in a process pool, write the manifest."""
from __future__ import annotations

import json
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from mrifoundry.sample import anatomy, defects
from mrifoundry.sample.exams import write_exam
from mrifoundry.sample.plan import build_plan
from mrifoundry.sample.protocols import NON_MR, SEQUENCES
from mrifoundry.sample.reports import dicom_name, display_name, write_reports_csv

GENERATOR_VERSION = "1.0"


def generate_sample(out_dir: Path, seed: int = 0, workers: int = 2) -> dict:
    """Write the sample (reports.csv, archive/, manifest.json) under ``out_dir``; return the manifest.

    Same seed → byte-identical files (no clock, no global RNG; results are gathered in
    plan order whatever the worker scheduling). Raises FileExistsError when
    ``out_dir/archive`` already exists, so an old sample is never mixed with a new one.
    """
    out_dir = Path(out_dir)
    archive = out_dir / "archive"
    if archive.exists():
        raise FileExistsError(f"{archive} exists: generate into an empty folder")
    archive.mkdir(parents=True)
    plan = build_plan(seed)
    write_reports_csv(plan["reports"], out_dir / "reports.csv")
    todo = [e for e in plan["exams"] if e["in_archive"]]
    head = [e for e in todo if e["protocol"].anatomy.startswith("mni")]
    body = [e for e in todo if not e["protocol"].anatomy.startswith("mni")]
    written: dict[int, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="mrifoundry-mni-") as tmp:
        mni_path = str(Path(tmp) / "mni_tissue.npy")
        if workers <= 1:
            mni = (mni_path, anatomy.prepare_mni(Path(mni_path)))
            for e in todo:
                written[e["index"]] = write_exam(e, seed, str(archive), mni)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                # body exams need no template: they keep the workers busy while it is prepared
                futures = {e["index"]: pool.submit(write_exam, e, seed, str(archive), None) for e in body}
                mni = (mni_path, anatomy.prepare_mni(Path(mni_path)))
                futures.update({e["index"]: pool.submit(write_exam, e, seed, str(archive), mni) for e in head})
                written = {i: f.result() for i, f in futures.items()}
    manifest = build_manifest(plan, written)
    with open(out_dir / "manifest.json", "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    return manifest


def _series_entry(spec: dict, res: dict | None) -> dict:
    status, reason = defects.EXPECTED.get(spec["defect"], ("ok", None))
    seq = SEQUENCES.get(spec["seq_key"]) if spec["seq_key"] else None
    image = spec["modality"] != "SR"
    return {
        "series_instance_uid": spec["uid"],
        "series_number": spec["number"],
        "series_description": spec["description"],
        "modality": spec["modality"],
        "sequence_type": (seq.sequence_type if seq and spec["modality"] == "MR" else None),
        "orientation": spec["orientation"],
        "n_files": res["n_files"] if res else defects.n_files(spec["defect"], spec["n_slices"],
                                                               spec["n_timepoints"]),
        "n_slices": spec["n_slices"] if image else None,
        "rows": spec["rows"] if image else None,
        "cols": spec["cols"] if image else None,
        "expected_status": status,
        "expected_reason": reason,
        "defect": spec["defect"],
        "transfer_syntax": res["transfer_syntax"] if res else None,
        "n_timepoints": spec["n_timepoints"] if image else None,
        "files": res["files"] if res else [],
    }


def build_manifest(plan: dict, written: dict[int, list[dict]]) -> dict:
    """Ground truth of the sample, PHI included (it lives with the restricted data)."""
    exams, uids = [], []
    for e in plan["exams"]:
        res = written.get(e["index"])
        series = [_series_entry(s, res[i] if res else None) for i, s in enumerate(e["series"])]
        exams.append({
            "accession_number": e["accession"], "patient_mrn": e["patient"]["mrn"],
            "study_instance_uid": e["study_uid"], "study_dir": e["study_dir"], "protocol": e["protocol"].name,
            "report_date": e["report_date"], "body_part": e["protocol"].body_part,
            "facial": e["protocol"].facial, "in_archive": e["in_archive"],
            "expected_reason": None if e["in_archive"] else "accession_not_found",
            "layout": e["layout"] if e["in_archive"] else None, "series": series,
        })
        if res:
            uids += [e["study_uid"], e["for_uid"]]
            for r in res:
                uids += [r["uid"], *r["sop_uids"]]
    return {
        "seed": plan["seed"],
        "generator_version": GENERATOR_VERSION,
        "counts": _counts(plan, exams),
        "exams": exams,
        "phi": _phi(plan, uids),
    }


def _counts(plan: dict, exams: list[dict]) -> dict:
    series = [s for e in exams for s in e["series"] if e["in_archive"]]
    return {
        "reports": len(plan["reports"]),
        "mr_reports": len(exams),
        "non_mr_reports": sum(n for *_, n in NON_MR),
        "protocols": len({e["protocol"] for e in exams}),
        "patients": len({r["patient_mrn"] for r in plan["reports"]}),
        "exams_in_archive": sum(e["in_archive"] for e in exams),
        "exams_absent": sum(not e["in_archive"] for e in exams),
        "series": len(series),
        "files": sum(s["n_files"] for s in series),
        "defects": sum(s["defect"] is not None for s in series),
    }


def _phi(plan: dict, uids: list[str]) -> dict:
    mr_patients = {r["patient_mrn"] for r in plan["reports"]}
    pats = [p for p in plan["patients"] if p["mrn"] in mr_patients]
    fleet = plan["fleet"]
    return {
        "patient_names": sorted({f(p["name"]) for p in pats for f in (dicom_name, display_name)}),
        "mrns": sorted(p["mrn"] for p in pats),
        "other_patient_ids": sorted(p["other_id"] for p in pats),
        "accession_numbers": sorted(r["accession_number"] for r in plan["reports"]),
        "birth_dates": sorted({d for p in pats for d in (p["birth_date"], p["birth_date"].replace("-", ""))}),
        "addresses": sorted({p["address"] for p in pats}),
        "phone_numbers": sorted({p["phone"] for p in pats}),
        "institutions": sorted({v for s in fleet for v in s["institution"]}),
        "physicians": sorted({f(n) for n in plan["staff"] for f in (dicom_name, display_name)}),
        "station_names": sorted({s["station"] for s in fleet}),
        "device_serials": sorted({s["serial"] for s in fleet}),
        "uids": uids,
        "report_fragments": sorted({e["fragment"] for e in plan["exams"]}),
    }
