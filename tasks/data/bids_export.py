"""The catalog as a BIDS dataset: what a query selects, named by opaque ids, checked by the validator.

Triad, BrainSegFounder and most 3D tooling read BIDS. ``export_bids`` writes the converted
volumes of a query as ``sub-<patient_id>/ses-<exam_id>/anat/sub-…_ses-…[_acq-…][_run-<n>]_<suffix>.nii.gz``
with a sidecar of the catalog's acquisition fields (seconds, as BIDS wants), ``participants.tsv`` and
``dataset_description.json``. Only anatomical sequences are exported (``T1w``, ``T2w``, ``PDw``,
``FLAIR``, ``T2starw``): BOLD and diffusion need task names and gradient tables the catalog does not
keep. Everything comes from the research zone, so the export holds opaque ids only.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from mrifoundry.atomic import atomic_path
from mrifoundry.catalog.views import connect, query_dicts
from mrifoundry import code_version

__all__ = ["ANAT_SUFFIX", "export_bids", "validate_bids"]

#: series.sequence_type → BIDS anatomical suffix (types without one are not exported)
ANAT_SUFFIX = {"T1": "T1w", "T2": "T2w", "PD": "PDw", "FLAIR": "FLAIR", "GRE": "T2starw"}
_ANAT_SUFFIXES = set(ANAT_SUFFIX.values())


def _suffix(row: dict) -> str | None:
    ents = json.loads(row["bids_entities"]) if row.get("bids_entities") else {}
    if ents.get("suffix") in _ANAT_SUFFIXES:
        return ents["suffix"]
    return ANAT_SUFFIX.get(row.get("sequence_type"))


def _sidecar(row: dict) -> dict:
    out = {}
    for col, key, scale in (("repetition_time", "RepetitionTime", 1e-3), ("echo_time", "EchoTime", 1e-3),
                            ("flip_angle", "FlipAngle", 1.0), ("field_strength", "MagneticFieldStrength", 1.0)):
        if row.get(col) is not None:
            out[key] = round(float(row[col]) * scale, 6)
    for col, key in (("manufacturer", "Manufacturer"), ("model", "ManufacturersModelName")):
        if row.get(col):
            out[key] = row[col]
    return out


def export_bids(research: Path, query: str, dest: Path, *, name: str = "mrifoundry export") -> dict:
    """Write the series of ``query`` (it must return ``series_id``) as a BIDS dataset at ``dest``.

    Returns:
        {"dest", "n_files", "n_subjects", "skipped": {sequence_type: n}}.
    Raises:
        ValueError: the query returns no ``series_id``, or ``dest`` exists and is not empty.
    """
    cols, picked = query_dicts(Path(research), query)
    if "series_id" not in cols:
        raise ValueError("the export query must return series_id")
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise ValueError(f"{dest} is not empty: export into a new folder")
    ids = sorted({r["series_id"] for r in picked})
    con = connect(Path(research))
    try:
        cur = con.execute("SELECT r.*, e.patient_id FROM series r JOIN exams e USING (exam_id) WHERE r.status = 'ok' "
                          "AND r.nifti_file IS NOT NULL AND list_contains(?, r.series_id) ORDER BY r.series_id", [ids])
        names_ = [d[0] for d in cur.description]
        rows = [dict(zip(names_, t)) for t in cur.fetchall()]
    finally:
        con.close()
    skipped: dict[str, int] = {}
    names: dict[tuple, int] = {}
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        for r in rows:
            suffix = _suffix(r)
            if suffix is None:
                skipped[r["sequence_type"] or "unknown"] = skipped.get(r["sequence_type"] or "unknown", 0) + 1
                continue
            ents = json.loads(r["bids_entities"]) if r.get("bids_entities") else {}
            acq = f"_acq-{ents['acq']}" if ents.get("acq", "").isalnum() else ""
            key = (r["patient_id"], r["exam_id"], acq, suffix)
            names[key] = run = names.get(key, 0) + 1
            stem = f"sub-{r['patient_id']}_ses-{r['exam_id']}{acq}_run-{run}_{suffix}"
            folder = tmp / f"sub-{r['patient_id']}" / f"ses-{r['exam_id']}" / "anat"
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(r["nifti_file"], folder / f"{stem}.nii.gz")
            (folder / f"{stem}.json").write_text(json.dumps(_sidecar(r), indent=1, sort_keys=True))
        subjects = sorted(p.name for p in tmp.glob("sub-*"))
        (tmp / "participants.tsv").write_text("participant_id\n" + "".join(f"{s}\n" for s in subjects))
        (tmp / "dataset_description.json").write_text(json.dumps(
            {"Name": name, "BIDSVersion": "1.9.0", "DatasetType": "raw",
             "GeneratedBy": [{"Name": "mrifoundry", "Version": code_version()}]}, indent=1))
        (tmp / "README").write_text(f"{name}: converted volumes of the mrifoundry catalog (RAS; ids are opaque "
                                    "pseudonyms). Exported by `mrifoundry export-bids`.\n")
        if dest.exists():
            dest.rmdir()
    return {"dest": str(dest), "n_files": sum(names.values()), "n_subjects": len(subjects), "skipped": skipped}


def validate_bids(root: Path, validator: str | None = None, timeout: float = 300) -> dict:
    """Run the BIDS validator (``bids-validator-deno``, offline) → {"errors": [codes], "warnings": [codes]}.

    Raises:
        FileNotFoundError: the validator is not installed (``pip install bids-validator-deno``).
    """
    exe = validator or shutil.which("bids-validator-deno") or str(Path(os.sys.executable).parent /
                                                                   "bids-validator-deno")
    if not Path(exe).exists() and not shutil.which(exe):
        raise FileNotFoundError("bids-validator-deno not found: pip install bids-validator-deno")
    r = subprocess.run([exe, "--format", "json", str(root)], capture_output=True, text=True, timeout=timeout)
    issues = json.loads(r.stdout)["issues"]["issues"]
    return {"errors": sorted({i["code"] for i in issues if i["severity"] == "error"}),
            "warnings": sorted({i["code"] for i in issues if i["severity"] == "warning"}), "exit_code": r.returncode}
