"""PNG slices: per-slice min-max to 0..255, names, no metadata chunks, atomic writes."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from PIL import Image

from mrifoundry.errors import CurationError
from mrifoundry.tasks.curation.continuity.checks import ContinuityConfig, Volume, check_series
from mrifoundry.tasks.curation.convert.png import volume_to_png
from tests import dicom_factory as f


def _chunks(data: bytes) -> list[bytes]:
    """PNG chunk types, parsed from the raw file (independent of Pillow)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, types = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        types.append(data[pos + 4:pos + 8])
        pos += 12 + length
    return types


def _volume(tmp_path, **kwargs) -> Volume:
    result = check_series("s1", f.write_series(tmp_path / "dcm", **kwargs), ContinuityConfig())
    assert result.status == "ok", result.reason
    return result.volumes[0]


def test_min_max_normalisation_matches_numpy(tmp_path):
    rng = np.random.default_rng(7)
    vol = rng.integers(100, 3000, size=(5, 12, 20), dtype=np.uint16)
    vol[2] = 42  # a constant slice
    volume = _volume(tmp_path, n_slices=5, rows=12, cols=20, volume=vol)
    records = volume_to_png(volume, tmp_path / "png" / "s1")
    assert [r.path.name for r in records] == [f"t00_z{k:04d}.png" for k in range(5)]
    for k, rec in enumerate(records):
        with Image.open(rec.path) as im:
            assert im.mode == "L" and im.size == (20, 12)
            got = np.asarray(im)
        x = vol[k].astype(float)
        if k == 2:
            assert not got.any()
            continue
        expected = np.round((x - x.min()) / (x.max() - x.min()) * 255).astype(np.uint8)
        np.testing.assert_array_equal(got, expected)
        assert got.min() == 0 and got.max() == 255
        assert (rec.width, rec.height, rec.min_value, rec.max_value) == (20, 12, x.min(), x.max())
        assert rec.position_mm == pytest.approx(volume.positions[k])
    assert not list((tmp_path / "png" / "s1").glob(".*"))  # no temp files left behind


def test_no_text_or_metadata_chunks(tmp_path):
    records = volume_to_png(_volume(tmp_path, n_slices=5), tmp_path / "png")
    raw = records[0].path.read_bytes()
    assert _chunks(raw) == [b"IHDR", b"IDAT", b"IEND"]
    for marker in (b"tEXt", b"iTXt", b"zTXt", b"eXIf", b"tIME"):
        assert marker not in raw
    with Image.open(records[0].path) as im:
        assert im.info == {} and im.text == {}


def test_rescale_slope_intercept_applied(tmp_path):
    vol = np.tile(np.arange(16, dtype=np.uint16) * 10, (5, 16, 1))
    volume = _volume(tmp_path, n_slices=5, volume=vol,
                     extra={"RescaleSlope": 2.0, "RescaleIntercept": -100.0})
    rec = volume_to_png(volume, tmp_path / "png")[0]
    assert (rec.min_value, rec.max_value) == (-100.0, 200.0)


def test_rows_by_columns_no_flip(tmp_path):
    vol = np.zeros((5, 10, 14), np.uint16)
    vol[:, 1, 3] = 500  # row 1, column 3
    rec = volume_to_png(_volume(tmp_path, n_slices=5, rows=10, cols=14, volume=vol), tmp_path / "png")[0]
    with Image.open(rec.path) as im:
        got = np.asarray(im)
    assert got.shape == (10, 14) and got[1, 3] == 255 and got.sum() == 255


def test_4d_names_carry_the_time_point(tmp_path):
    result = check_series("s1", f.write_series(tmp_path / "d", n_slices=5, n_time=2, temporal_tags="tpi"),
                          ContinuityConfig())
    records = volume_to_png(result.volumes[1], tmp_path / "png")
    assert records[4].path.name == "t01_z0004.png" and records[4].temporal_index == 1


def test_unreadable_slice_is_convert_error(tmp_path):
    volume = _volume(tmp_path, n_slices=5)
    volume.files[1].write_bytes(b"broken")
    with pytest.raises(CurationError) as err:
        volume_to_png(volume, tmp_path / "png" / "s1")
    assert err.value.reason == "convert_error" and err.value.item_id == "s1"
