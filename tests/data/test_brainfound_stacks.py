"""BrainFound contrast stacks: series choice, missing-contrast rule, PNGs checked against an
independent resampling, re-runs, bad input, and the 3-channel path through load_slice,
MultiCrop and MAETransform."""
from __future__ import annotations

import shutil
import struct
from pathlib import Path

import nibabel as nib
import nibabel.processing
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from mrifoundry.catalog.views import query_dicts
from mrifoundry.models.ssl.multicrop import IMAGENET_MEAN, IMAGENET_STD, ChannelwiseJitter, MultiCrop, MultiCropConfig
from mrifoundry.tasks.data.contrast_stacks import DEFAULT_QUERY, ExamStack, build_stacks, choose_contrasts
from mrifoundry.models.ssl.mae import MAETransform
from mrifoundry.tasks.data.slices import load_slice

SIZE = 64


@pytest.fixture(scope="module")
def stacks(volume_catalog) -> list[ExamStack]:
    return choose_contrasts(query_dicts(volume_catalog, DEFAULT_QUERY)[1])


@pytest.fixture(scope="module")
def built(volume_catalog, stacks, tmp_path_factory):
    out = tmp_path_factory.mktemp("brainfound")
    return out, build_stacks(volume_catalog, stacks, out, size=SIZE)


def _descriptions(research: Path) -> dict[str, dict]:
    _, rows = query_dicts(research, "SELECT s.series_id, s.series_description, e.body_part "
                                     "FROM series s JOIN exams e USING (exam_id)")
    return {r["series_id"]: r for r in rows}


# ------------------------------------------------------------------ choice of series
def test_catalog_choice_prefers_axial(volume_catalog, stacks):
    desc = _descriptions(volume_catalog)
    assert len(stacks) == 2  # the two brain exams; the knee exam has no FLAIR and is not brain
    by_t1 = {desc[s.t1["series_id"]]["series_description"]: s for s in stacks}
    # one exam has SAG T1 SE (20 slices) and AX T1 SE POST (16): axial wins over slice count
    assert set(by_t1) == {"AX T1 SE POST", "SAG T1 SE"}
    for s in stacks:
        assert desc[s.t2["series_id"]]["series_description"] == "AX T2 TSE"
        assert desc[s.flair["series_id"]]["series_description"] == "AX FLAIR"
        assert all(desc[r["series_id"]]["body_part"].upper() == "BRAIN" for r in s.channels)
    assert by_t1["AX T1 SE POST"].reference == 0  # axial T1 is the grid
    assert by_t1["SAG T1 SE"].reference == 1      # sagittal T1: the axial T2 is the grid


def _row(exam, seq, sid, orientation="axial", n=20, contrast=False):
    return {"exam_id": exam, "series_id": sid, "sequence_type": seq, "orientation": orientation,
            "n_slices": n, "contrast": contrast, "nifti_path": f"nifti/{exam}/{sid}.nii.gz"}


def test_choice_and_missing_rule_on_hand_made_rows():
    rows = [
        # exam a: axial beats sagittal, pre-contrast beats post, more slices, then smaller id
        _row("a", "T1", "s1", "sagittal", 200), _row("a", "T1", "s2", n=40, contrast=True),
        _row("a", "T1", "s4", n=30), _row("a", "T1", "s3", n=30), _row("a", "T1", "s0", n=10),
        _row("a", "T2", "t1", "coronal", 30), _row("a", "T2", "t2", "coronal", 30),
        _row("a", "FLAIR", "f1"), _row("a", "PD", "p1", n=99),
        _row("b", "T2", "b2", "sagittal"), _row("b", "FLAIR", "b3", "coronal"),  # two contrasts
        _row("c", "T1", "c1"), _row("c", "PD", "c2"), _row("c", "DWI", "c3"),      # one contrast
        {**_row("d", "T1", "d1"), "nifti_path": None}, _row("d", "T2", "d2"),      # T1 not converted
    ]
    got = {s.exam_id: s for s in choose_contrasts(rows)}
    assert set(got) == {"a", "b"}
    a = got["a"]
    assert (a.t1["series_id"], a.t2["series_id"], a.flair["series_id"]) == ("s3", "t1", "f1")
    assert a.reference == 0 and a.present == ["T1", "T2", "FLAIR"]
    assert got["b"].t1 is None and got["b"].present == ["T2", "FLAIR"]
    assert got["b"].reference == 1  # nothing axial: first present contrast
    assert {s.exam_id for s in choose_contrasts(rows, missing="zero")} == {"a", "b"}
    assert [s.exam_id for s in choose_contrasts(rows, missing="skip")] == ["a"]
    assert choose_contrasts(list(reversed(rows))) == choose_contrasts(rows)  # order-independent
    with pytest.raises(ValueError, match="missing"):
        choose_contrasts(rows, missing="mean")


# ------------------------------------------------------------------ PNGs vs an independent resampling
def _expected_channel(research: Path, ref_row: dict, row: dict, k: int) -> np.ndarray:
    """The test's own pipeline for one channel: resample → robust scale → rot90 → pad → resize."""
    ref = nib.load(research / ref_row["nifti_path"])
    img = nib.load(research / row["nifti_path"])
    native = img.get_fdata(dtype=np.float32)
    on_ref = native if row is ref_row else nibabel.processing.resample_from_to(
        nib.Nifti1Image(native, img.affine), (ref.shape, ref.affine), order=1, cval=0.0).get_fdata()
    lo, hi = np.percentile(native, [0.5, 99.5])
    u8 = np.rint(np.clip((on_ref - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    plane = np.rot90(u8[:, :, k])
    n = max(plane.shape)
    square = np.zeros((n, n), np.uint8)
    top, left = (n - plane.shape[0]) // 2, (n - plane.shape[1]) // 2
    square[top:top + plane.shape[0], left:left + plane.shape[1]] = plane
    return np.asarray(Image.fromarray(square).resize((SIZE, SIZE), Image.Resampling.BILINEAR)).astype(int)


def test_pngs_match_independent_resampling(volume_catalog, stacks, built):
    out, res = built
    assert res.skipped == []
    for s in stacks:
        rows = [r for r in res.rows if r["exam_id"] == s.exam_id]
        ref_row = s.channels[s.reference]
        ref = nib.load(volume_catalog / ref_row["nifti_path"]).get_fdata()
        lo, hi = np.percentile(ref, [0.5, 99.5])
        fg = np.clip((ref - lo) / (hi - lo), 0, 1) > 0.05
        expected_k = [k for k in range(ref.shape[2]) if fg[:, :, k].mean() >= 0.05]
        assert [r["slice_index"] for r in rows] == expected_k and len(expected_k) > 10
        assert {r["channels"] for r in rows} == {"T1,T2,FLAIR"}
        assert rows[0]["series_ids"] == ",".join(r["series_id"] for r in s.channels)
        for r in rows[::6]:
            png = np.asarray(Image.open(r["png_file"]))
            assert png.shape == (SIZE, SIZE, 3) and Path(r["png_file"]).parent == out / s.exam_id
            for c, row in enumerate(s.channels):
                exp = _expected_channel(volume_catalog, ref_row, row, r["slice_index"])
                assert np.abs(png[..., c].astype(int) - exp).max() <= 3, (s.exam_id, r["slice_index"], c)
            # three different contrasts, not one replicated
            assert np.abs(png[..., 0].astype(int) - png[..., 1]).mean() > 5
            assert np.abs(png[..., 1].astype(int) - png[..., 2]).mean() > 5


def _chunk_types(path: str) -> list[bytes]:
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    types, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        types.append(data[pos + 4:pos + 8])
        pos += 12 + length
    return types


def test_pngs_carry_no_metadata_and_reruns_write_nothing(volume_catalog, stacks, built, monkeypatch):
    out, res = built
    for r in res.rows:
        assert set(_chunk_types(r["png_file"])) == {b"IHDR", b"IDAT", b"IEND"}
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}

    def boom(*a, **k):
        raise AssertionError("a re-run must not read the volumes again")

    monkeypatch.setattr(nib, "load", boom)
    again = build_stacks(volume_catalog, stacks, out, size=SIZE)
    assert again.rows == res.rows and again.skipped == []
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_changed_parameters_rebuild_and_drop_stale_slices(volume_catalog, stacks, tmp_path):
    one = stacks[:1]
    first = build_stacks(volume_catalog, one, tmp_path, size=32, slice_range=(5, 10))
    assert [r["slice_index"] for r in first.rows] == [5, 6, 7, 8, 9]
    second = build_stacks(volume_catalog, one, tmp_path, size=32, slice_range=(5, 8))
    assert [r["slice_index"] for r in second.rows] == [5, 6, 7]
    assert sorted(p.name for p in (tmp_path / one[0].exam_id).glob("*.png")) == ["0005.png", "0006.png", "0007.png"]


# ------------------------------------------------------------------ missing contrasts
def test_fill_rules(volume_catalog, stacks, tmp_path):
    axial_t1 = next(s for s in stacks if s.reference == 0)
    no_flair = ExamStack(axial_t1.exam_id, axial_t1.t1, axial_t1.t2, None)
    rng = (8, 12)
    rep = build_stacks(volume_catalog, [no_flair], tmp_path / "rep", size=SIZE, slice_range=rng)
    zero = build_stacks(volume_catalog, [no_flair], tmp_path / "zero", size=SIZE, slice_range=rng, missing="zero")
    skip = build_stacks(volume_catalog, [no_flair], tmp_path / "skip", size=SIZE, slice_range=rng, missing="skip")
    assert {r["channels"] for r in rep.rows + zero.rows} == {"T1,T2,-"} and len(rep.rows) == 4
    assert rep.rows[0]["series_ids"].endswith(",-")
    for r, z in zip(rep.rows, zero.rows):
        a, b = np.asarray(Image.open(r["png_file"])).astype(int), np.asarray(Image.open(z["png_file"]))
        assert np.abs(a[..., 2] - (a[..., 0] + a[..., 1]) / 2).max() <= 2 and a[..., 2].max() > 50
        assert b[..., 2].max() == 0 and np.array_equal(b[..., :2], a[..., :2])
    assert skip.rows == [] and skip.skipped[0]["reason"].startswith("incomplete")

    # a series whose field of view holds too little of a slice counts as missing there:
    # the sagittal T1 slab covers about 55 % of the axial T2 planes of its exam
    sag_t1 = next(s for s in stacks if s.reference == 1)
    strict = build_stacks(volume_catalog, [sag_t1], tmp_path / "strict", size=SIZE, slice_range=rng, min_coverage=0.9)
    assert {r["channels"] for r in strict.rows} == {"-,T2,FLAIR"} and len(strict.rows) == 4
    a = np.asarray(Image.open(strict.rows[0]["png_file"])).astype(int)
    assert np.abs(a[..., 0] - (a[..., 1] + a[..., 2]) / 2).max() <= 2


def test_bad_nifti_skips_only_that_exam(volume_catalog, stacks, tmp_path):
    research = tmp_path / "research"
    for s in stacks:
        for r in s.channels:
            (research / r["nifti_path"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(volume_catalog / r["nifti_path"], research / r["nifti_path"])
    bad, good = stacks
    (research / bad.t2["nifti_path"]).write_bytes(b"\x1f\x8b garbage, not a NIfTI" * 50)
    gone = ExamStack("gone", {**good.t1, "nifti_path": "nifti/gone/x.nii.gz"}, good.t2, None)
    res = build_stacks(research, [bad, good, gone], tmp_path / "out", size=32)
    reasons = {s["exam_id"]: s["reason"] for s in res.skipped}
    assert reasons.keys() == {bad.exam_id, "gone"}
    assert reasons[bad.exam_id].startswith("unreadable_nifti") and reasons["gone"].startswith("missing_nifti")
    assert res.rows and {r["exam_id"] for r in res.rows} == {good.exam_id}
    assert not (tmp_path / "out" / bad.exam_id).exists()


# ------------------------------------------------------------------ the 3-channel training path
def test_load_slice_rgb_and_grey(built, tmp_path):
    _, res = built
    png = res.rows[len(res.rows) // 2]["png_file"]
    x = load_slice(png)
    a = np.asarray(Image.open(png)).astype(np.float32)
    assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.float32
    for c in range(3):
        exp = (a[..., c] - a[..., c].min()) / (a[..., c].max() - a[..., c].min())
        assert np.allclose(x[c].numpy(), exp, atol=1e-6)

    rgb = np.stack([np.full((8, 9), 7), np.zeros((8, 9)), np.arange(72).reshape(8, 9) + 100], -1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    y = load_slice(tmp_path / "rgb.png")
    assert y.shape == (3, 8, 9) and y[0].max() == 0 and y[1].max() == 0  # constant channels stay 0
    assert torch.allclose(y[2], torch.arange(72, dtype=torch.float32).reshape(8, 9) / 71)

    grey = (np.arange(60).reshape(6, 10) * 3 + 10).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    g = load_slice(tmp_path / "grey.png")
    assert g.shape == (1, 6, 10)
    assert torch.allclose(g[0], torch.from_numpy((grey.astype(np.float32) - 10) / 177))


def test_channelwise_jitter_is_colorjitter_per_channel():
    img = torch.rand(3, 20, 20)
    jit, ref = ChannelwiseJitter(0.4, 0.4), v2.ColorJitter(brightness=0.4, contrast=0.4)
    for seed in range(6):
        torch.manual_seed(seed)
        got = jit(img)
        for c in range(3):  # torchvision on each channel alone, same random draws
            torch.manual_seed(seed)
            assert torch.allclose(got[c:c + 1], ref(img[c:c + 1]), atol=1e-6)
        torch.manual_seed(seed)
        grey = jit(img[:1])
        torch.manual_seed(seed)
        assert torch.allclose(grey, ref(img[:1]), atol=1e-6)  # grey slices: as before


def test_multicrop_and_mae_keep_a_stack_in_colour(built):
    _, res = built
    img = load_slice(res.rows[len(res.rows) // 2]["png_file"])
    img[1] = 0.0  # an empty channel must stay empty: no augmentation may leak the others into it
    cfg = MultiCropConfig(global_size=32, local_size=16, n_local=4, blur_kernel=5, jitter_p=1.0)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.manual_seed(0)
    out = MultiCrop(cfg)(img)
    assert [t.shape for t in out["global"]] == [(3, 32, 32)] * 2
    assert [t.shape for t in out["local"]] == [(3, 16, 16)] * 4
    raws = [t * std + mean for t in out["global"] + out["local"]]
    assert all(raw[1].abs().max() < 1e-5 for raw in raws)
    # not turned grey (a small local crop may hold background only, hence global crops alone)
    assert all((raw[0] - raw[2]).abs().mean() > 0.01 for raw in raws[:2])

    mae = MAETransform(24)
    torch.manual_seed(0)
    y = mae(img) * std + mean
    assert y.shape == (3, 24, 24) and y[1].abs().max() < 1e-5 and (y[0] - y[2]).abs().mean() > 0.01
    g = mae(img[:1]) * std + mean
    assert torch.allclose(g[0], g[1], atol=1e-5) and torch.allclose(g[0], g[2], atol=1e-5)
    with pytest.raises(ValueError):
        mae(img[:2])
