"""Procedural body phantoms: ellipsoids and cylinders of tissue classes in LPS mm.

Each phantom is defined once in patient coordinates (+x left, +y posterior, +z head) and
sampled at a series' voxel coordinates, so the axial, coronal, sagittal and oblique series
of one exam all show the same object. Primitives are painted in order; later ones win.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from mrifoundry.sample.contrast import TISSUES

# ("E", center, radii, tissue) ellipsoid; ("C", axis, center, radii of the two other axes, half length, tissue)
Prim = tuple


def E(c, r, t) -> Prim:
    return ("E", c, r, t)


def C(axis, c, r, half, t) -> Prim:
    return ("C", axis, c, r, half, t)


def bone(c, r, cortex=3.0) -> list[Prim]:
    """A bone: cortical shell (dark) around marrow."""
    return [E(c, r, "bone"), E(c, tuple(max(v - cortex, 1.0) for v in r), "marrow")]


def long_bone(axis, c, r, half, cortex=3.0) -> list[Prim]:
    return [C(axis, c, r, half, "bone"), C(axis, c, tuple(max(v - cortex, 1.0) for v in r), half, "marrow")]


def limb(r_fat, r_muscle, half=250.0, c=(0.0, 0.0, 0.0)) -> list[Prim]:
    return [C("z", c, r_fat, half, "fat"), C("z", c, r_muscle, half, "muscle")]


def vertebrae(y, body_r, step, n, canal_r, cord_r, z0=0.0) -> list[Prim]:
    """A column of vertebral bodies and discs along z, with canal, cord and posterior elements."""
    out: list[Prim] = []
    for k in range(-n, n + 1):
        z = z0 + k * step
        out += long_bone("z", (0.0, y, z), body_r, step * 0.38)
        out.append(C("z", (0.0, y, z + step / 2), body_r, step * 0.12, "disc"))
        out += bone((0.0, y + body_r[1] + canal_r[1] * 2 + 6, z), (body_r[0] * 0.7, body_r[1] * 0.5, step * 0.3))
    out.append(C("z", (0.0, y + body_r[1] + canal_r[1] + 2, z0), canal_r, 400.0, "csf"))
    out.append(C("z", (0.0, y + body_r[1] + canal_r[1] + 2, z0), cord_r, 400.0, "cord"))
    return out


def _trunk(rx, ry) -> list[Prim]:
    return [C("z", (0, 0, 0), (rx, ry), 300.0, "fat"), C("z", (0, 0, 0), (rx - 10, ry - 10), 300.0, "muscle"),
            C("z", (0, 0, 0), (rx - 22, ry - 22), 300.0, "fat")]


def _pelvis(prostate: bool) -> list[Prim]:
    p = _trunk(175, 125) + [E((0, -40, 10), (48, 35, 42), "fluid"), C("z", (0, 45, 0), (16, 14), 120, "muscle")]
    for s in (-1, 1):
        p += bone((s * 92, 0, -30), (25, 25, 25)) + long_bone("z", (s * 98, 0, -110), (15, 15), 70)
        p += bone((s * 105, 25, 45), (28, 50, 55), cortex=4)
    if prostate:
        p += [E((0, -10, -45), (24, 19, 21), "gland"), E((0, -8, -45), (12, 9, 11), "fluid")]
    return p


def _thorax(breasts: bool) -> list[Prim]:
    p = _trunk(175, 120)
    p += [E((s * 80, 20, 0), (60, 75, 130), "air") for s in (-1, 1)]
    p += [E((15, 0, -20), (65, 52, 60), "myocardium"), E((28, 5, -25), (34, 27, 40), "blood"),
          E((-25, -15, -15), (30, 20, 35), "blood"), C("z", (10, 45, 0), (12, 12), 300, "blood")]
    p += long_bone("z", (0, 80, 0), (20, 16), 300)
    if breasts:
        for s in (-1, 1):
            p += [E((s * 85, -125, 0), (75, 55, 70), "fat"), E((s * 85, -130, 0), (45, 32, 45), "gland")]
    return p


def _build(name: str) -> list[Prim]:
    if name == "knee":
        p = limb((68, 62), (60, 54))
        p += [E((0, -12, 30), (32, 9, 30), "fluid")] + long_bone("z", (0, 5, 90), (18, 17), 75)
        p += [E((0, 5, 12), (43, 33, 25), "cartilage")] + bone((0, 5, 12), (40, 30, 22))
        p += [E((0, 5, -12), (41, 32, 12), "cartilage")] + bone((0, 5, -16), (38, 29, 11))
        p += long_bone("z", (0, 5, -85), (21, 19), 70) + bone((0, -40, 28), (22, 8, 25))
        return p + [C("z", (0, -45, -22), (11, 3), 22, "bone")]
    if name == "shoulder":
        p = [E((0, 0, 0), (65, 58, 80), "fat"), E((0, 0, 0), (56, 50, 72), "muscle"),
             E((0, 0, 0), (28, 28, 28), "fluid"), E((0, 0, 0), (26, 26, 26), "cartilage")]
        p += bone((0, 0, 0), (24, 24, 24)) + long_bone("z", (0, 0, -80), (14, 14), 60)
        p += bone((-32, 5, 4), (8, 20, 26)) + bone((-5, 5, 46), (32, 20, 6))
        return p + [C("x", (0, -8, 30), (5, 4), 40, "bone")]
    if name in ("lspine", "tspine"):
        step = 35.0 if name == "lspine" else 27.0
        return _trunk(165, 110) + vertebrae(25.0, (24, 19), step, 5, (10, 9), (5, 4))
    if name == "cspine":
        p = limb((70, 62), (62, 54)) + [C("z", (0, -35, 0), (9, 8), 200, "air")]
        return p + vertebrae(5.0, (10, 8), 18.0, 6, (8, 7), (5, 4))
    if name == "neck":
        p = limb((72, 62), (64, 54)) + [C("z", (0, -28, 0), (10, 9), 200, "air"),
                                        E((0, -32, -30), (26, 10, 20), "gland")]
        p += [C("z", (s * 26, -8, 0), (4, 4), 200, "blood") for s in (-1, 1)]
        p += [C("z", (s * 34, -2, 0), (6, 5), 200, "blood") for s in (-1, 1)]
        return p + vertebrae(15.0, (10, 8), 18.0, 6, (8, 7), (5, 4))
    if name == "abdomen":
        p = _trunk(165, 115) + [E((-60, -10, 20), (85, 75, 80), "liver"), E((85, 30, 30), (35, 40, 50), "spleen")]
        p += [E((s * 62, 45, -20), (25, 20, 50), "kidney") for s in (-1, 1)]
        p += [E((40, -35, 50), (40, 30, 30), "fluid"), C("z", (15, 30, 0), (11, 11), 300, "blood"),
              C("z", (-18, 25, 0), (12, 10), 300, "blood")]
        return p + long_bone("z", (0, 60, 0), (22, 18), 300)
    if name == "pelvis":
        return _pelvis(prostate=False)
    if name == "prostate":
        return _pelvis(prostate=True)
    if name == "hip":
        return _pelvis(prostate=False)
    if name == "breast":
        return _thorax(breasts=True)
    if name == "cardiac":
        return _thorax(breasts=False)
    if name == "ankle":
        p = limb((48, 60), (40, 48)) + long_bone("z", (0, 0, 70), (14, 13), 60)
        p += long_bone("z", (26, 6, 60), (7, 7), 70) + bone((0, 5, -5), (22, 28, 18))
        return p + bone((0, 30, -38), (20, 36, 18)) + [C("z", (0, 52, 40), (9, 4), 50, "bone")]
    if name == "wrist":
        p = limb((36, 24), (30, 18)) + long_bone("z", (-12, 0, 45), (10, 7), 40) + long_bone("z", (12, 0, 45),
                                                                                            (7, 6), 40)
        for i, (x, z) in enumerate(((-14, -2), (0, -2), (14, -2), (-10, -20), (6, -20), (20, -18))):
            p += bone((x, 0, z), (7, 6, 7), cortex=1.5)
        return p
    if name == "elbow":
        p = limb((52, 46), (45, 40)) + long_bone("z", (0, 0, 55), (12, 11), 50) + bone((0, 0, 5), (30, 15, 12))
        return p + long_bone("z", (-12, 0, -55), (8, 8), 50) + long_bone("z", (14, 5, -55), (9, 8), 50)
    raise KeyError(f"unknown phantom {name!r}")


# Where each phantom's field of view is centred (LPS mm); default origin.
PHANTOM_CENTERS = {"prostate": (0.0, -10.0, -45.0), "hip": (92.0, 0.0, -30.0), "cardiac": (10.0, 0.0, -20.0),
                   "lspine": (0.0, 30.0, 0.0), "tspine": (0.0, 30.0, 0.0), "cspine": (0.0, 10.0, 0.0)}


@lru_cache(maxsize=None)
def phantom(name: str) -> tuple[Prim, ...]:
    return tuple(_build(name))


def labels(name: str, coords: np.ndarray) -> np.ndarray:
    """Tissue index (into contrast.TISSUES) at each LPS point of ``coords`` (3, ...)."""
    x, y, z = coords
    out = np.full(x.shape, TISSUES.index("air"), dtype=np.uint8)
    axes = {"x": 0, "y": 1, "z": 2}
    for prim in phantom(name):
        if prim[0] == "E":
            _, c, r, t = prim
            m = ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1.0
        else:
            _, axis, c, r, half, t = prim
            a = axes[axis]
            u, v = [i for i in range(3) if i != a]
            m = (((coords[u] - c[u]) / r[0]) ** 2 + ((coords[v] - c[v]) / r[1]) ** 2 <= 1.0) & (
                np.abs(coords[a] - c[a]) <= half)
        out[m] = TISSUES.index(t)
    return out
