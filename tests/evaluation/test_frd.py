"""mrifoundry.tasks.evaluation.frd against frd-score's own command and API, on small generated textures."""
from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy import ndimage

from mrifoundry.tasks.evaluation.frd import CACHE_FILE, extract_features, frd, sample_images

N = 12  # images per side: enough that feature extraction dominates the cold run


def make_set(folder: Path, n: int, seed: int, blur: float = 0.0, size: int = 64) -> list[str]:
    """Smooth random textures with one bright blob each; ``blur`` shifts the distribution."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for i in range(n):
        x = ndimage.gaussian_filter(rng.standard_normal((size, size)), rng.uniform(1.5, 3.0))
        cy, cx, r = rng.uniform(16, 48), rng.uniform(16, 48), rng.uniform(4, 10)
        x += 0.5 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        if blur:
            x = ndimage.gaussian_filter(x, blur)
        x = (x - x.min()) / (x.max() - x.min())
        p = folder / f"img{i:03d}.png"
        Image.fromarray((x * 255).astype(np.uint8)).save(p)
        out.append(str(p))
    return out


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("frd")
    return {
        "root": root,
        "cache": root / "cache",
        "A": make_set(root / "A", N, seed=0),
        "A2": make_set(root / "A2", N, seed=1),              # same generator, other draw
        "B": make_set(root / "B", N, seed=1, blur=1.5),      # A2, blurred
    }


@pytest.fixture(scope="module")
def cold_warm(sets):
    """FRD(A, A2) with an empty cache, then again with the warm cache."""
    t0 = time.perf_counter()
    cold = frd(sets["A"], sets["A2"], cache_dir=sets["cache"], workers=2)
    t1 = time.perf_counter()
    warm = frd(sets["A"], sets["A2"], cache_dir=sets["cache"], workers=2)
    t2 = time.perf_counter()
    print(f"\nFRD cold {t1 - t0:.2f}s {cold['seconds']}, warm {t2 - t1:.2f}s {warm['seconds']}")
    return cold, warm, t1 - t0, t2 - t1


def _frd_score_cli(dir1: Path, dir2: Path) -> float:
    exe = Path(sys.executable).with_name("frd-score")
    out = subprocess.run([str(exe), str(dir1), str(dir2), "-w", "2"], capture_output=True, text=True,
                         check=True, timeout=120)
    m = re.search(r"FRD \(v1\): (\S+)", out.stdout)
    assert m, out.stdout + out.stderr
    return float(m.group(1))


def test_equals_frd_score_command(sets, cold_warm, tmp_path):
    # the command on folders of 6 + 6 of the cached images (frd-score sorts a folder by name)
    k = 6
    for side in ("A", "A2"):
        (tmp_path / side).mkdir()
        for p in sets[side][:k]:
            shutil.copy(p, tmp_path / side)
    ref = _frd_score_cli(tmp_path / "A", tmp_path / "A2")
    ours = frd(sets["A"][:k], sets["A2"][:k], cache_dir=sets["cache"], workers=2)
    assert ours["cache_misses"] == 0
    assert math.isfinite(ref)
    assert ours["frd"] == pytest.approx(ref, abs=1e-6, rel=0)
    assert ours["n_reference"] == ours["n_other"] == k
    cold = cold_warm[0]
    assert cold["n_reference"] == cold["n_other"] == N
    # 2D FRDv1: 77 x (Original + 4 wavelet bands) + 13 diagnostics, 6 constant ones dropped
    assert cold["n_features_extracted"] == 398 and cold["n_features"] == 392


def test_warm_cache_is_fast_and_identical(sets, cold_warm):
    cold, warm, t_cold, t_warm = cold_warm
    assert (cold["cache_hits"], cold["cache_misses"]) == (0, 2 * N)
    assert (warm["cache_hits"], warm["cache_misses"]) == (2 * N, 0)
    assert warm["frd"] == cold["frd"]
    assert t_cold >= 5 * t_warm, (t_cold, t_warm, cold["seconds"], warm["seconds"])
    tbl = pq.read_table(sets["cache"] / CACHE_FILE)
    assert tbl.num_rows == 2 * N and len(set(tbl["sha256"].to_pylist())) == 2 * N


def test_cache_is_keyed_by_content(sets, cold_warm, tmp_path):
    # a copy under another name is a hit; the same name with new bytes is a miss
    copy = tmp_path / "renamed.png"
    shutil.copy(sets["A"][0], copy)
    res = extract_features([copy], cache_dir=sets["cache"], workers=1)
    assert (res["hits"], res["misses"]) == (1, 0)
    Image.fromarray(np.random.default_rng(9).integers(0, 255, (64, 64), dtype=np.uint8)).save(copy)
    res = extract_features([copy], cache_dir=sets["cache"], workers=1)
    assert (res["hits"], res["misses"]) == (0, 1)


def test_constant_image_names_the_file(tmp_path):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(blank)
    with pytest.raises(RuntimeError, match="blank.png"):
        extract_features([blank], cache_dir=tmp_path / "cache", workers=1)


def test_identical_sets_match_frd_score(sets, cold_warm):
    import frd_score

    half = sets["A"][:4]
    ours = frd(half, half, cache_dir=sets["cache"], workers=1)
    assert ours["cache_misses"] == 0
    # d² is 0 up to the rounding of sqrtm on a singular (n < features) product, so
    # log d² is -inf (d² <= 0, frd-score's convention) or far below any real distance
    assert abs(ours["d2"]) < 1e-4 * cold_warm[0]["d2"]
    theirs = frd_score.compute_frd([half, half], num_workers=2)
    if math.isinf(theirs):
        assert ours["frd"] == theirs
    else:
        assert ours["frd"] == pytest.approx(theirs, abs=1e-6, rel=0)


def test_frd_grows_with_shift(sets, cold_warm):
    # same generator, other draw vs that draw blurred; n is equal on both, as FRD falls with n
    same = cold_warm[0]["frd"]
    shifted = frd(sets["A"], sets["B"], cache_dir=sets["cache"], workers=2)
    assert shifted["cache_misses"] == N
    print(f"\nFRD same {same:.3f}, blurred {shifted['frd']:.3f}")
    assert shifted["frd"] > same + 0.5


def test_sample_images_seeded_and_sized():
    paths = [f"/d/img{i:03d}.png" for i in range(50)]
    a = sample_images(paths, 10, seed=3)
    assert a == sample_images(list(reversed(paths)), 10, seed=3)  # input order does not matter
    assert len(a) == len(set(a)) == 10 and a == sorted(a)
    assert a != sample_images(paths, 10, seed=4)
    with pytest.raises(ValueError, match="only 50"):
        sample_images(paths, 51, seed=0)
