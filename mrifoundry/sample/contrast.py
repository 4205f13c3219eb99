"""Tissue signal per contrast: one table shared by the MNI anatomy and the procedural phantoms.

Values are plausible 12-bit magnitudes (T1: fat > WM > GM > CSF; T2: CSF > GM > WM;
FLAIR: CSF dark; fat-suppressed and STIR: fat dark). ``CT`` is Hounsfield units.
"""
from __future__ import annotations

import numpy as np

TISSUES = ("gm", "wm", "csf", "bone", "fat", "muscle", "marrow", "fluid", "cartilage", "liver", "kidney",
           "spleen", "disc", "cord", "blood", "myocardium", "gland", "air")
#        gm    wm   csf  bone  fat  musc marrow fluid cart liver kidn splen disc cord blood myo gland air
_TABLE = {
    "T1": (600, 850, 180, 40, 1150, 420, 950, 200, 450, 560, 420, 380, 330, 520, 120, 430, 380, 0),
    "T1FS": (560, 760, 150, 30, 140, 400, 170, 180, 420, 620, 480, 440, 300, 480, 150, 450, 440, 0),
    "T2": (900, 620, 1750, 30, 720, 330, 560, 1800, 520, 300, 760, 820, 1100, 640, 90, 380, 650, 0),
    "T2FS": (860, 580, 1700, 25, 130, 300, 140, 1750, 500, 280, 720, 800, 1050, 600, 80, 360, 620, 0),
    "PD": (1050, 880, 1200, 40, 1000, 560, 980, 1300, 900, 650, 800, 820, 900, 850, 150, 600, 800, 0),
    "PDFS": (980, 820, 1150, 35, 160, 520, 190, 1350, 880, 600, 760, 780, 860, 800, 130, 560, 760, 0),
    "STIR": (820, 540, 1600, 20, 70, 280, 90, 1700, 450, 260, 700, 760, 950, 560, 60, 330, 600, 0),
    "FLAIR": (920, 660, 110, 30, 520, 300, 400, 140, 420, 300, 380, 400, 380, 620, 60, 320, 420, 0),
    "DWI": (520, 460, 90, 10, 40, 250, 60, 80, 300, 330, 520, 700, 300, 420, 30, 260, 480, 0),
    "DIXON": (620, 520, 420, 30, 90, 480, 160, 500, 500, 560, 540, 520, 480, 500, 300, 480, 500, 0),
    "GRE": (700, 610, 520, 30, 820, 380, 640, 600, 560, 420, 470, 480, 520, 560, 300, 400, 470, 0),
    "SSFP": (620, 560, 1300, 30, 900, 300, 700, 1350, 500, 420, 600, 650, 700, 560, 1400, 350, 560, 0),
    "CT": (38, 28, 6, 900, -95, 50, 250, 10, 110, 60, 35, 45, 80, 35, 40, 45, 40, -1000),
}
ENHANCING = {"blood": 3.0, "kidney": 1.6, "liver": 0.7, "spleen": 0.9, "gland": 1.0, "myocardium": 0.8,
             "gm": 0.05}


def tissue_index(name: str) -> int:
    return TISSUES.index(name)


def signal(contrast: str, post_contrast: bool = False, uptake: float = 0.0) -> np.ndarray:
    """Intensity per tissue (float32, indexed like ``TISSUES``).

    ``uptake`` in [0, 1] is the fraction of peak gadolinium enhancement (DCE time points);
    ``post_contrast`` alone means a late phase (uptake 0.6). Enhancement only brightens T1.
    """
    values = np.array(_TABLE[contrast], dtype=np.float32)
    if post_contrast and uptake == 0.0:
        uptake = 0.6
    if uptake and contrast in ("T1", "T1FS", "GRE"):
        for name, gain in ENHANCING.items():
            values[TISSUES.index(name)] *= 1.0 + gain * uptake
    return values
