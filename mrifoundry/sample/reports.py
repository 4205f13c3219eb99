"""Fictional patients, staff and radiology report texts (full of PHI on purpose), and the CSV export."""
from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import numpy as np

REPORT_COLUMNS = ("accession_number", "patient_mrn", "patient_name", "patient_birth_date", "report_date",
                  "modality", "report_type", "report_text")

_LAST = ("SMITH JOHNSON WILLIAMS BROWN JONES GARCIA MILLER DAVIS RODRIGUEZ MARTINEZ HERNANDEZ LOPEZ WILSON "
         "ANDERSON THOMAS TAYLOR MOORE JACKSON MARTIN LEE THOMPSON WHITE HARRIS CLARK LEWIS ROBINSON WALKER "
         "YOUNG ALLEN KING WRIGHT SCOTT TORRES NGUYEN HILL FLORES GREEN ADAMS NELSON BAKER HALL RIVERA CAMPBELL "
         "MITCHELL CARTER ROBERTS OKAFOR PATEL KOWALSKI FITZGERALD LINDQVIST ABERNATHY DUBOIS YAMAMOTO").split()
_FIRST = ("JAMES MARY ROBERT PATRICIA MICHAEL JENNIFER WILLIAM LINDA DAVID ELIZABETH RICHARD BARBARA JOSEPH "
          "SUSAN THOMAS JESSICA CHARLES SARAH CHRISTOPHER KAREN DANIEL LISA MATTHEW NANCY ANTHONY BETTY MARK "
          "SANDRA DONALD ASHLEY STEVEN KIMBERLY PAUL EMILY ANDREW DONNA JOSHUA MICHELLE KENNETH CAROL KEVIN "
          "AMANDA BRIAN MELISSA GEORGE DEBORAH TIMOTHY STEPHANIE OLUWASEUN PRIYA MATEUSZ SIOBHAN").split()
_STREETS = ("Oak St", "Maple Ave", "Cedar Ln", "Pine Rd", "Elm Dr", "Willow Way", "Birch Ct", "Chestnut Blvd")
_CITIES = (("Durham", "NC", "277"), ("Raleigh", "NC", "276"), ("Cary", "NC", "275"), ("Chapel Hill", "NC", "275"))
_HISTORY = ("headache", "dizziness", "numbness in the left hand", "pain after a fall", "follow-up of known lesion",
            "chronic pain", "suspected tear", "weight loss", "elevated PSA", "abnormal screening", "swelling",
            "radiculopathy", "palpitations", "staging", "visual disturbance", "hearing loss")
_FINDINGS = ("No acute abnormality.", "Mild degenerative change.", "Small joint effusion.",
             "Stable appearance compared with the prior examination.", "A 6 mm lesion, likely benign.",
             "Partial-thickness tear.", "Moderate disc bulge with mild canal narrowing.",
             "Scattered nonspecific foci.", "No suspicious enhancement.", "Findings as described above.")


def person_name(rng: np.random.Generator) -> tuple[str, str, str]:
    """(last, first, middle initial) upper case."""
    return str(rng.choice(_LAST)), str(rng.choice(_FIRST)), chr(ord("A") + int(rng.integers(26)))


def dicom_name(name: tuple[str, str, str]) -> str:
    return f"{name[0]}^{name[1]}^{name[2]}"


def display_name(name: tuple[str, str, str]) -> str:
    return f"{name[0]}, {name[1]} {name[2]}"


def make_patient(rng: np.random.Generator, mrn: str) -> dict:
    """One fictional patient with every identifier a hospital keeps."""
    name = person_name(rng)
    birth = dt.date(1935, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365 * 68)))
    city, state, zip3 = _CITIES[int(rng.integers(len(_CITIES)))]
    return {
        "mrn": mrn,
        "name": name,
        "sex": "F" if rng.random() < 0.5 else "M",
        "birth_date": birth.isoformat(),
        "address": f"{int(rng.integers(100, 9999))} {rng.choice(_STREETS)}^^{city}^{state}^"
                   f"{zip3}{int(rng.integers(10, 99))}",
        "phone": f"919-555-{int(rng.integers(1000, 9999))}",
        "other_id": f"EMPI{int(rng.integers(10**7, 10**8))}",
        "height_m": round(float(rng.uniform(1.5, 1.95)), 2),
        "weight_kg": round(float(rng.uniform(48, 120)), 1),
    }


def age_at(birth_date: str, on: str) -> int:
    b, d = dt.date.fromisoformat(birth_date), dt.date.fromisoformat(on)
    return d.year - b.year - ((d.month, d.day) < (b.month, b.day))


def report_text(rng: np.random.Generator, patient: dict, accession: str, report_type: str,
                report_date: str, referring: str, radiologist: str) -> tuple[str, str]:
    """(report text, a distinctive fragment of it). The text repeats PHI the way real reports do."""
    age = age_at(patient["birth_date"], report_date)
    sex = "female" if patient["sex"] == "F" else "male"
    history = str(rng.choice(_HISTORY))
    fragment = f"{display_name(patient['name'])} (MRN {patient['mrn']})"
    text = (
        f"PATIENT: {fragment}  DOB: {patient['birth_date']}\n"
        f"ACCESSION: {accession}  EXAM: {report_type}  DATE: {report_date}\n"
        f"REFERRING PHYSICIAN: Dr. {referring}\n"
        f"CLINICAL HISTORY: {age}-year-old {sex} with {history}.\n"
        f"TECHNIQUE: {report_type.title()} per departmental protocol.\n"
        f"FINDINGS: {rng.choice(_FINDINGS)} {rng.choice(_FINDINGS)}\n"
        f"IMPRESSION: {rng.choice(_FINDINGS)}\n"
        f"Electronically signed by {radiologist}, MD on {report_date}."
    )
    return text, fragment


def write_reports_csv(rows: list[dict], path: Path) -> None:
    """The export as the RIS writes it: one row per report, multi-line text quoted."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=REPORT_COLUMNS, lineterminator="\n")
        w.writeheader()
        for row in rows:
            w.writerow({k: row[k] for k in REPORT_COLUMNS})
