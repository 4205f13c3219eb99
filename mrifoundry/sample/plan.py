"""The whole sample as data: patients, reports, exams, series and defects, all from the seed.

Planning is cheap and pure; the workers only render what the plan says. Every random
choice uses a generator derived from (seed, purpose[, index]), never the global RNG.
"""
from __future__ import annotations

import datetime as dt
import re

import numpy as np

from mrifoundry.sample import defects as D
from mrifoundry.sample.protocols import NON_MR, PROTOCOLS, SCANNERS
from mrifoundry.sample.reports import dicom_name, display_name, make_patient, person_name, report_text

UID_ROOT = "1.2.840.114202.4"       # a hospital-looking (fictional) organisation root
INSTITUTIONS = (("RIDGEVIEW MEDICAL CENTER", "2301 Erwin Rd^^Durham^NC^27710"),
                ("RIDGEVIEW NORTH IMAGING", "40 Medical Park Dr^^Raleigh^NC^27607"))
FIRST_DAY, N_DAYS = dt.date(2014, 1, 1), (dt.date(2022, 12, 31) - dt.date(2014, 1, 1)).days + 1
N_PATIENTS = 330
N_ABSENT = 5


def _rng(seed: int, *path: int) -> np.random.Generator:
    return np.random.default_rng([seed, *path])


def _unique_ints(rng, n, lo, hi) -> list[int]:
    return [int(v) + lo for v in rng.choice(hi - lo, size=n, replace=False)]


def _scanner_fleet(rng) -> list[dict]:
    fleet = []
    for i, (maker, models, fields, sw) in enumerate(SCANNERS):
        for j, model in enumerate(models):
            fleet.append({"manufacturer": maker, "model": model, "field": fields[j], "software": sw,
                          "station": f"RVMC-MR{len(fleet) + 1:02d}", "serial": str(int(rng.integers(10**4, 10**6))),
                          "institution": INSTITUTIONS[(i + j) % 2]})
    return fleet


def _layout_dirs(layout: str, rng, patient: dict, date: str, accession: str, study_uid: str) -> str:
    if layout == "nested":
        return f"{patient['name'][0]}_{patient['mrn']}/{date.replace('-', '')}_{accession}"
    if layout == "flat":
        return f"flat/{study_uid}"
    return f"{date[:4]}/{date[5:7]}/{date[8:]}/{int(rng.integers(16**7, 16**8)):08X}"


def _series_specs(rng, protocol, exam_idx: int, study_uid: str, defect: str | None) -> list[dict]:
    n_clean = 3 if defect else int(rng.choice([3, 4, 5], p=[0.45, 0.35, 0.2]))
    entries = [(e, None) for e in protocol.recipe[:n_clean]]
    if defect:
        entries.append((protocol.recipe[3], defect))
    head = protocol.anatomy.startswith("mni")
    out = []
    for i, (entry, dfx) in enumerate(entries):
        desc, seq, orient, post = entry
        matrix = int(rng.choice([96, 112, 128])) if head else int(rng.choice([64, 80, 96]))
        rows = matrix if rng.random() < 0.7 else matrix - 16   # some rectangular (phase FOV < 100 %)
        thick = float(rng.choice([4.0, 5.0])) if head else float(rng.choice([3.0, 3.5, 4.0, 5.0]))
        spec = {"index": i, "number": i + 2, "description": desc, "seq_key": seq, "orientation": orient,
                "post_contrast": post, "rows": rows, "cols": matrix, "fov": protocol.fov_mm,
                "n_slices": int(rng.integers(16, 21)) if head else int(rng.integers(12, 17)),
                "thickness": thick, "gap": round(thick * float(rng.choice([0.1, 0.2, 0.3])), 2),
                "n_timepoints": 1, "modality": "MR", "transfer_syntax": None, "defect": dfx}
        if dfx:
            spec.update(D.defect_series(dfx, entry))
        spec["uid"] = f"{study_uid}.{spec['number']}"
        out.append(spec)
    return out


def _assign_defects(rng, exams: list[dict]) -> dict[int, str]:
    """exam index → defect; distinct exams of non-facial protocols dated 2016–2020."""
    ok = [e for e in exams if not e["protocol"].facial and "2016" <= e["report_date"][:4] <= "2020"
          and e["in_archive"]]
    dce = [e for e in ok if any(w in e["protocol"].name for w in D.DCE_PROTOCOL_WORDS)]
    order = list(rng.permutation(len(ok)))
    dce_order = list(rng.permutation(len(dce)))
    chosen: dict[int, str] = {}
    for defect in D.DEFECTS:
        pool, idx = (dce, dce_order) if defect.startswith("dce_") else (ok, order)
        while True:
            e = pool[int(idx.pop(0))]
            if e["index"] not in chosen and len(e["protocol"].recipe) > 3:
                chosen[e["index"]] = defect
                break
    return chosen


def build_plan(seed: int) -> dict:
    """Everything the generator will write, as plain data (exam series specs included)."""
    rng = _rng(seed, 0)
    mrns = _unique_ints(rng, N_PATIENTS, 10**7, 10**8)
    patients = [make_patient(_rng(seed, 1, i), str(m)) for i, m in enumerate(mrns)]
    referring = [person_name(rng) for _ in range(24)]
    radiologists = [person_name(rng) for _ in range(8)]
    technologists = [person_name(rng) for _ in range(10)]
    fleet = _scanner_fleet(rng)
    n_mr = sum(p.n_exams for p in PROTOCOLS)
    n_all = n_mr + sum(n for *_, n in NON_MR)
    accessions = [str(a) for a in _unique_ints(rng, n_all, 10**9, 4 * 10**9)]

    exams: list[dict] = []
    by_protocol: dict[str, list[int]] = {}
    for protocol in PROTOCOLS:
        for _ in range(protocol.n_exams):
            prior = by_protocol.get(protocol.name, [])
            # follow-ups: some patients come back for the same protocol
            if prior and rng.random() < 0.18:
                pat = exams[prior[int(rng.integers(len(prior)))]]["patient"]
            else:
                pat = patients[int(rng.integers(N_PATIENTS))]
            day = FIRST_DAY + dt.timedelta(days=int(rng.integers(N_DAYS)))
            idx = len(exams)
            exams.append({"index": idx, "protocol": protocol, "patient": pat, "report_date": day.isoformat(),
                          "accession": accessions[idx], "in_archive": True})
            by_protocol.setdefault(protocol.name, []).append(idx)

    # a handful of MR reports whose exam never reached the archive
    absent = [int(i) for i in rng.choice(n_mr, size=N_ABSENT, replace=False)]
    for i in absent:
        exams[i]["in_archive"] = False
    chosen = _assign_defects(rng, exams)

    reports = []
    for e in exams:
        erng = _rng(seed, 2, e["index"])
        ref, rad = referring[int(erng.integers(len(referring)))], radiologists[int(erng.integers(len(radiologists)))]
        text, frag = report_text(erng, e["patient"], e["accession"], e["protocol"].name, e["report_date"],
                                 display_name(ref), display_name(rad))
        e["fragment"] = frag
        reports.append(_report_row(e["patient"], e["accession"], e["report_date"], "MR", e["protocol"].name, text))
        _finish_exam(e, erng, seed, ref, rad, technologists, fleet, chosen.get(e["index"]))
    k = n_mr
    for modality, report_type, count in NON_MR:
        for _ in range(count):
            prng = _rng(seed, 3, k)
            pat = patients[int(prng.integers(N_PATIENTS))]
            day = (FIRST_DAY + dt.timedelta(days=int(prng.integers(N_DAYS)))).isoformat()
            ref, rad = referring[int(prng.integers(len(referring)))], radiologists[int(prng.integers(8))]
            text, _ = report_text(prng, pat, accessions[k], report_type, day, display_name(ref), display_name(rad))
            reports.append(_report_row(pat, accessions[k], day, modality, report_type, text))
            k += 1
    # the export is sorted by date, as a RIS query returns it
    reports.sort(key=lambda r: (r["report_date"], r["accession_number"]))
    return {"seed": seed, "patients": patients, "exams": exams, "reports": reports, "fleet": fleet,
            "staff": referring + radiologists + technologists}


def _report_row(pat, accession, day, modality, report_type, text) -> dict:
    return {"accession_number": accession, "patient_mrn": pat["mrn"], "patient_name": display_name(pat["name"]),
            "patient_birth_date": pat["birth_date"], "report_date": day, "modality": modality,
            "report_type": report_type, "report_text": text}


def _finish_exam(e, erng, seed, ref, rad, technologists, fleet, defect) -> None:
    """Scanner, staff, UIDs, layout and series specs of one MR exam."""
    date = e["report_date"].replace("-", "")
    hh, mm, ss = int(erng.integers(7, 20)), int(erng.integers(60)), int(erng.integers(60))
    e["study_time"] = f"{hh:02d}{mm:02d}{ss:02d}"
    e["study_uid"] = f"{UID_ROOT}.{date}{e['study_time']}.{int(erng.integers(10**7, 10**8))}"
    e["for_uid"] = f"{UID_ROOT}.9.{int(erng.integers(10**11, 10**12))}"
    e["study_id"] = str(int(erng.integers(1000, 99999)))
    e["scanner"] = fleet[int(erng.integers(len(fleet)))]
    e["referring"], e["reading"] = dicom_name(ref), dicom_name(rad)
    e["operator"] = dicom_name(technologists[int(erng.integers(len(technologists)))])
    e["performing"] = dicom_name(rad)
    e["implicit_vr"] = bool(erng.random() < 0.15) and not defect
    e["layout"] = str(erng.choice(["nested", "flat", "dated"]))
    e["study_dir"] = _layout_dirs(e["layout"], erng, e["patient"], e["report_date"], e["accession"],
                                  e["study_uid"]) if e["in_archive"] else None
    e["offset"] = [round(float(v), 2) for v in erng.uniform(-6, 6, size=3)]
    e["series"] = _series_specs(erng, e["protocol"], e["index"], e["study_uid"], defect)
    e["defect"] = defect


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")
