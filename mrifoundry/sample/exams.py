"""Render and write one exam of the plan into the folder archive (runs in a worker process)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from pydicom.uid import UID

from mrifoundry.sample import anatomy, dicomwrite, geometry, phantoms, render
from mrifoundry.sample.fastwrite import SeriesWriter
from mrifoundry.sample.protocols import SEQUENCES

_ORTHOGONAL = {"axial": "sagittal", "coronal": "axial", "sagittal": "coronal", "oblique": "axial"}


def _center(exam: dict) -> np.ndarray:
    name = exam["protocol"].anatomy
    base = anatomy.HEAD_CENTERS.get(name) or phantoms.PHANTOM_CENTERS.get(name, (0.0, 0.0, 0.0))
    return np.asarray(base) + np.asarray(exam["offset"])


def _file_path(exam: dict, spec: dict, k: int, sop_uid: str) -> str:
    """Path of the k-th file of a series, relative to the archive, in the exam's folder layout."""
    if exam["layout"] == "nested":
        return f"{exam['study_dir']}/SE{spec['number']:03d}/IM{k + 1:05d}.dcm"
    if exam["layout"] == "flat":
        return f"{exam['study_dir']}/{hashlib.sha1(sop_uid.encode()).hexdigest()[:16]}.dcm"
    return f"{exam['study_dir']}/{spec['number']:08X}/{k + 1:08d}"


def _stack(spec, orientation, center, n):
    row, col = geometry.orientation_vectors(orientation)
    px = spec["fov"] / spec["cols"]
    ipps = geometry.slice_positions(center, row, col, spec["rows"], spec["cols"], px, n,
                                    spec["thickness"] + spec["gap"])
    return row, col, px, ipps


def _images(exam, spec, rng, mni) -> list[dict]:
    """Per-file records (position, orientation, pixels, numbering) with the series' defect applied."""
    center, defect = _center(exam), spec["defect"]
    n, n_t = spec["n_slices"], spec["n_timepoints"]
    row, col, px, ipps = _stack(spec, spec["orientation"], center, n)
    iop = geometry.iop(row, col)
    normal = np.cross(row, col)
    contrast = "CT" if spec["modality"] == "CT" else SEQUENCES[spec["seq_key"]].contrast
    coords = geometry.voxel_coords(ipps, row, col, spec["rows"], spec["cols"], px)
    anat = exam["protocol"].anatomy
    out = []
    for t in range(n_t):
        uptake = t / max(n_t - 1, 1) if n_t > 1 else 0.0
        pix = render.render(coords, anat, contrast, rng, post_contrast=spec["post_contrast"], uptake=uptake, mni=mni)
        for z in range(n):
            out.append({"ipp": ipps[z], "iop": iop, "pixels": pix[z], "z": z, "t": t,
                        "loc": float(ipps[z] @ normal), "image_type": None})
    if defect == "missing_slice":
        out.pop(n // 2)
    elif defect == "duplicate_position":
        dup = dict(out[n // 2])
        noise = rng.integers(-3, 4, size=dup["pixels"].shape)
        dup["pixels"] = np.clip(dup["pixels"].astype(np.int32) + noise, 0, render.MAX_VALUE).astype(np.uint16)
        out.insert(n // 2 + 1, dup)
    elif defect in ("localizer_mixed", "mixed_orientation"):
        other = _ORTHOGONAL[spec["orientation"]]
        m = 1 if defect == "localizer_mixed" else n - n // 2
        orow, ocol, opx, oipps = _stack(spec, other, center, n)
        sel = [n // 2] if defect == "localizer_mixed" else list(range(n // 2, n))
        ocoords = geometry.voxel_coords(oipps[sel], orow, ocol, spec["rows"], spec["cols"], opx)
        opix = render.render(ocoords, anat, contrast, rng, post_contrast=spec["post_contrast"], mni=mni)
        onormal = np.cross(orow, ocol)
        extra = [{"ipp": oipps[s], "iop": geometry.iop(orow, ocol), "pixels": opix[i], "z": s, "t": 0,
                  "loc": float(oipps[s] @ onormal),
                  "image_type": ["ORIGINAL", "PRIMARY", "LOCALIZER"] if defect == "localizer_mixed" else None}
                 for i, s in enumerate(sel)]
        if defect == "localizer_mixed":
            out.insert(0, extra[0])          # the scout is acquired first
        else:
            out = out[: n - m] + extra
    elif defect == "blank_series":
        for rec in out:
            rec["pixels"] = np.zeros_like(rec["pixels"])
    elif defect == "burned_in_annotation":
        for rec in out:
            rec["pixels"] = render.burn_in(rec["pixels"], exam["patient"]["name"][0])
    return out


def _instance_number(rec, k, spec) -> int:
    if spec["defect"] == "dce_slice_major":
        return rec["z"] * spec["n_timepoints"] + rec["t"] + 1
    if spec["defect"] == "missing_slice":
        return rec["z"] + 1   # the numbering keeps the gap, as when a file is lost in transfer
    return k + 1


def write_exam(exam: dict, seed: int, archive: str, mni: tuple) -> list[dict]:
    """Write every series of ``exam``; returns per series: uid, n_files, sop_uids, files (relative)."""
    study = dicomwrite.study_header(exam)
    results = []
    for spec in exam["series"]:
        rng = np.random.default_rng([seed, 4, exam["index"], spec["index"]])
        sops, files = [], []
        if spec["modality"] == "SR":
            sop = f"{spec['uid']}.1"
            rel = _file_path(exam, spec, 0, sop)
            dicomwrite.write_text_sr(exam, spec, study, Path(archive) / rel, sop)
            results.append({"uid": spec["uid"], "n_files": 1, "sop_uids": [sop], "files": [rel],
                            "transfer_syntax": "1.2.840.10008.1.2.1"})
            continue
        ds = dicomwrite.series_template(exam, spec, study)
        if spec["defect"] == "burned_in_annotation":
            ds.BurnedInAnnotation = "YES"
        fast = None if ds.file_meta.TransferSyntaxUID.is_compressed else SeriesWriter(ds, dicomwrite.DYNAMIC)
        base_type = ["ORIGINAL", "PRIMARY", "M", "ND"] if spec["modality"] == "MR" else ["ORIGINAL", "PRIMARY", "AXIAL"]
        for k, rec in enumerate(_images(exam, spec, rng, mni)):
            sop = f"{spec['uid']}.{k + 1}"
            rel = _file_path(exam, spec, k, sop)
            dce = spec["n_timepoints"] > 1
            values = dicomwrite.slice_values(
                image_type=rec["image_type"] or base_type, sop_uid=sop, instance=_instance_number(rec, k, spec),
                ipp=rec["ipp"], iop=rec["iop"], pixels=rec["pixels"], slice_location=rec["loc"],
                temporal=rec["t"] + 1 if dce else None,
                acq_time=dicomwrite.hhmmss_plus(ds.SeriesTime, 60 * rec["t"]) if dce else ds.SeriesTime)
            if fast:
                fast.write(Path(archive) / rel, values)
            else:
                dicomwrite.write_image(ds, Path(archive) / rel, values)
            sops.append(sop)
            files.append(rel)
        if spec["defect"] == "truncated_file":
            _truncate(Path(archive) / files[len(files) // 2], spec["rows"] * spec["cols"] * 2)
        results.append({"uid": spec["uid"], "n_files": len(files), "sop_uids": sops, "files": files,
                        "transfer_syntax": str(UID(ds.file_meta.TransferSyntaxUID))})
    return results


def _truncate(path: Path, pixel_bytes: int) -> None:
    """Cut the file in the middle of its PixelData (the last element of the file)."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - pixel_bytes // 2)
