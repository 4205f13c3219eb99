"""The sample hospital's MR protocols, their series recipes and sequence parameters.

Counts per protocol are fixed (a long tail: some protocols have 1–3 exams) so the
per-protocol sampling stage sees realistic skew whatever the seed.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sequence:
    """Acquisition parameters of one MR sequence; ``contrast`` keys the tissue intensity tables."""

    sequence_type: str          # contracts.md vocabulary: T1, T2, PD, STIR, FLAIR, DWI, DIXON, DCE, GRE …
    contrast: str               # key of anatomy/phantoms intensity tables
    scanning_sequence: str
    sequence_variant: str
    scan_options: str
    tr: float
    te: float
    flip: float
    ti: float | None = None
    etl: int = 1
    b_value: float | None = None


SEQUENCES: dict[str, Sequence] = {
    "T1": Sequence("T1", "T1", "SE", "SP", "", 550.0, 12.0, 90.0),
    "T1FS": Sequence("T1", "T1FS", "SE", "SP", "FS", 600.0, 11.0, 90.0),
    "T1GRE": Sequence("T1", "T1", "GR", "SP\\SS", "", 8.5, 3.9, 12.0),
    "T2": Sequence("T2", "T2", "SE", "SK\\SP\\OSP", "", 4500.0, 95.0, 150.0, etl=16),
    "T2FS": Sequence("T2", "T2FS", "SE", "SK\\SP\\OSP", "FS", 4200.0, 80.0, 150.0, etl=14),
    "PD": Sequence("PD", "PD", "SE", "SK\\SP\\OSP", "", 3000.0, 30.0, 150.0, etl=8),
    "PDFS": Sequence("PD", "PDFS", "SE", "SK\\SP\\OSP", "FS", 3200.0, 33.0, 150.0, etl=8),
    "STIR": Sequence("STIR", "STIR", "IR\\SE", "SK\\SP\\MP", "", 4800.0, 40.0, 150.0, ti=160.0, etl=12),
    "FLAIR": Sequence("FLAIR", "FLAIR", "IR\\SE", "SK\\SP\\MP", "", 9000.0, 85.0, 150.0, ti=2500.0, etl=18),
    "DWI": Sequence("DWI", "DWI", "EP", "SK\\SP", "FS", 5200.0, 78.0, 90.0, b_value=1000.0),
    "DIXON": Sequence("DIXON", "DIXON", "GR", "SP\\SS", "", 6.8, 2.4, 10.0),
    "GRE": Sequence("GRE", "GRE", "GR", "SP", "", 520.0, 15.0, 25.0),
    "SSFP": Sequence("OTHER", "SSFP", "GR", "SS\\SK", "", 3.2, 1.4, 60.0),
    "DCE": Sequence("DCE", "T1FS", "GR", "SP\\SS", "FS", 4.5, 1.8, 12.0),
}

# (SeriesDescription, sequence key, orientation, post-contrast); orientation "oblique" = rotated coronal.
R = tuple[str, str, str, bool]
_BRAIN: list[R] = [("AX T2 TSE", "T2", "axial", False), ("AX FLAIR", "FLAIR", "axial", False),
                   ("SAG T1 SE", "T1", "sagittal", False), ("AX DWI B1000", "DWI", "axial", False),
                   ("COR T2 TSE", "T2", "coronal", False)]
_BRAIN_C: list[R] = _BRAIN[:3] + [("AX T1 SE POST", "T1", "axial", True), ("COR T1 POST", "T1", "coronal", True)]
_HEAD_SMALL: list[R] = [("COR T1", "T1", "coronal", False), ("AX T2 FS", "T2FS", "axial", False),
                        ("COR T1 FS POST", "T1FS", "coronal", True), ("AX T1 FS POST", "T1FS", "axial", True),
                        ("SAG T1", "T1", "sagittal", False)]
_NECK: list[R] = [("AX T1", "T1", "axial", False), ("AX T2 FS", "T2FS", "axial", False),
                  ("COR STIR", "STIR", "coronal", False), ("AX T1 FS POST", "T1FS", "axial", True),
                  ("SAG T1 POST", "T1", "sagittal", True)]
_KNEE: list[R] = [("SAG PD FS", "PDFS", "sagittal", False), ("COR T1", "T1", "coronal", False),
                  ("AX PD FS", "PDFS", "axial", False), ("COR PD FS", "PDFS", "coronal", False),
                  ("SAG T2", "T2", "sagittal", False)]
_SHOULDER: list[R] = [("COR OBL T2 FS", "T2FS", "oblique", False), ("AX PD FS", "PDFS", "axial", False),
                      ("SAG T1", "T1", "sagittal", False), ("COR OBL T1", "T1", "oblique", False),
                      ("SAG T2 FS", "T2FS", "sagittal", False)]
_JOINT: list[R] = [("COR STIR", "STIR", "coronal", False), ("COR T1", "T1", "coronal", False),
                   ("AX PD FS", "PDFS", "axial", False), ("SAG PD FS", "PDFS", "sagittal", False),
                   ("AX T1", "T1", "axial", False)]
_SPINE: list[R] = [("SAG T1 TSE", "T1", "sagittal", False), ("SAG T2 TSE", "T2", "sagittal", False),
                   ("AX T2 TSE", "T2", "axial", False), ("SAG STIR", "STIR", "sagittal", False),
                   ("AX T1 TSE", "T1", "axial", False)]
_ABDOMEN: list[R] = [("AX T2 HASTE", "T2", "axial", False), ("COR T2 HASTE", "T2", "coronal", False),
                     ("AX DIXON W", "DIXON", "axial", False), ("AX DWI B800", "DWI", "axial", False),
                     ("AX T1 VIBE POST", "T1FS", "axial", True)]
_PELVIS: list[R] = [("AX T2 TSE", "T2", "axial", False), ("SAG T2 TSE", "T2", "sagittal", False),
                    ("AX T1 TSE", "T1", "axial", False), ("AX DWI B1000", "DWI", "axial", False),
                    ("AX T1 FS POST", "T1FS", "axial", True)]
_BREAST: list[R] = [("AX T2 TSE", "T2", "axial", False), ("AX T1 NON FS", "T1GRE", "axial", False),
                    ("AX DWI B800", "DWI", "axial", False), ("SAG T1 FS POST", "T1FS", "sagittal", True),
                    ("AX STIR", "STIR", "axial", False)]
_CARDIAC: list[R] = [("AX HASTE BB", "T2", "axial", False), ("SAX CINE SSFP", "SSFP", "axial", False),
                     ("COR T1 BB", "T1", "coronal", False), ("SAX PSIR LGE", "T1FS", "axial", True),
                     ("SAG T2 STIR", "STIR", "sagittal", False)]


@dataclass(frozen=True)
class Protocol:
    name: str            # = report_type and StudyDescription
    body_part: str       # BodyPartExamined
    anatomy: str         # "mni" (real anatomy) or a phantom name of phantoms.py
    facial: bool         # shows facial anatomy (excluded by the curation rules)
    n_exams: int
    recipe: tuple[R, ...]
    fov_mm: float
    contrast_agent: bool


def _p(name, body_part, anatomy, facial, n, recipe, fov) -> Protocol:
    return Protocol(name, body_part, anatomy, facial, n, tuple(recipe), fov, "WITH CONTRAST" in name)


PROTOCOLS: tuple[Protocol, ...] = (
    _p("MRI BRAIN WITHOUT AND WITH CONTRAST", "BRAIN", "mni", True, 34, _BRAIN_C, 230.0),
    _p("MRI BRAIN WITHOUT CONTRAST", "BRAIN", "mni", True, 26, _BRAIN, 230.0),
    _p("MRI FACE WITHOUT AND WITH CONTRAST", "HEAD", "mni_face", True, 4, _HEAD_SMALL, 200.0),
    _p("MRI NECK SOFT TISSUE WITHOUT AND WITH CONTRAST", "NECK", "neck", True, 6, _NECK, 220.0),
    _p("MRI ORBITS WITHOUT AND WITH CONTRAST", "HEAD", "mni_orbits", True, 3, _HEAD_SMALL, 180.0),
    _p("MRI IAC WITHOUT AND WITH CONTRAST", "HEAD", "mni_iac", True, 3, _HEAD_SMALL, 180.0),
    _p("MRI PITUITARY WITHOUT AND WITH CONTRAST", "HEAD", "mni_pituitary", True, 2, _HEAD_SMALL, 180.0),
    _p("MRI LUMBAR SPINE WITHOUT CONTRAST", "LSPINE", "lspine", False, 26, _SPINE, 280.0),
    _p("MRI RIGHT KNEE WITHOUT CONTRAST", "KNEE", "knee", False, 22, _KNEE, 160.0),
    _p("MRI LEFT KNEE WITHOUT CONTRAST", "KNEE", "knee", False, 16, _KNEE, 160.0),
    _p("MRI LEFT SHOULDER WITHOUT CONTRAST", "SHOULDER", "shoulder", False, 14, _SHOULDER, 180.0),
    _p("MRI RIGHT SHOULDER WITHOUT CONTRAST", "SHOULDER", "shoulder", False, 10, _SHOULDER, 180.0),
    _p("MRI CERVICAL SPINE WITHOUT CONTRAST", "CSPINE", "cspine", False, 12, _SPINE, 240.0),
    _p("MRI ABDOMEN WITHOUT AND WITH CONTRAST", "ABDOMEN", "abdomen", False, 12, _ABDOMEN, 380.0),
    _p("MRI BREAST BILATERAL WITHOUT AND WITH CONTRAST", "BREAST", "breast", False, 9, _BREAST, 340.0),
    _p("MRI LIVER WITHOUT AND WITH CONTRAST", "LIVER", "abdomen", False, 7, _ABDOMEN, 380.0),
    _p("MRI PELVIS WITHOUT AND WITH CONTRAST", "PELVIS", "pelvis", False, 7, _PELVIS, 360.0),
    _p("MRI PROSTATE WITHOUT AND WITH CONTRAST", "PROSTATE", "prostate", False, 6, _PELVIS, 220.0),
    _p("MRI LEFT HIP WITHOUT CONTRAST", "HIP", "hip", False, 5, _JOINT, 220.0),
    _p("MRI CARDIAC MORPHOLOGY AND FUNCTION WITHOUT AND WITH CONTRAST", "HEART", "cardiac", False, 4,
       _CARDIAC, 360.0),
    _p("MRI THORACIC SPINE WITHOUT CONTRAST", "TSPINE", "tspine", False, 4, _SPINE, 360.0),
    _p("MRI RIGHT ANKLE WITHOUT CONTRAST", "ANKLE", "ankle", False, 3, _JOINT, 160.0),
    _p("MRI RIGHT WRIST WITHOUT CONTRAST", "WRIST", "wrist", False, 2, _JOINT, 120.0),
    _p("MRI RIGHT FOOT WITHOUT CONTRAST", "FOOT", "ankle", False, 2, _JOINT, 180.0),
    _p("MRI LEFT ELBOW WITHOUT CONTRAST", "ELBOW", "elbow", False, 1, _JOINT, 150.0),
)

# Non-MR report types of the export (no archive exam): (modality, report_type, count).
NON_MR: tuple[tuple[str, str, int], ...] = (
    ("CT", "CT CHEST WITH CONTRAST", 70), ("CT", "CT HEAD WITHOUT CONTRAST", 60),
    ("CT", "CT ABDOMEN AND PELVIS WITH CONTRAST", 55), ("US", "US ABDOMEN COMPLETE", 40),
    ("US", "US RENAL", 20), ("XR", "XR CHEST 2 VIEWS", 65), ("XR", "XR LEFT KNEE 3 VIEWS", 25),
    ("NM", "NM BONE SCAN WHOLE BODY", 8), ("MG", "MG SCREENING BILATERAL", 22),
)

# (Manufacturer, models, field strengths, software)
SCANNERS = (
    ("SIEMENS", ("Skyra", "Aera", "Prisma_fit"), (3.0, 1.5, 3.0), "syngo MR E11"),
    ("GE MEDICAL SYSTEMS", ("DISCOVERY MR750", "SIGNA Artist", "Optima MR450w"), (3.0, 1.5, 1.5), "27\\LX\\MR"),
    ("Philips", ("Ingenia", "Achieva"), (3.0, 1.5), "5.6.1\\5.6.1.2"),
)
