"""mrifoundry/atomic.py: a failed write leaves the old file and no temp; folders swap whole; every temp
name is one the curation's temp sweep removes."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from mrifoundry.atomic import atomic_path, is_temp, replace_dir, temp_name, write_bytes, write_text
from mrifoundry.tasks.curation.stage_guard import _is_temp, sweep_temp


def test_a_write_that_raises_leaves_the_old_file_and_no_temp(tmp_path):
    target = write_text(tmp_path / "a.json", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("cut")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_folder_written_at_a_temp_path_that_fails_is_removed(tmp_path):
    with pytest.raises(ValueError):
        with atomic_path(tmp_path / "d") as tmp:
            tmp.mkdir()
            (tmp / "x").write_text("1")
            raise ValueError
    assert list(tmp_path.iterdir()) == []


def test_replace_dir_swaps_a_folder(tmp_path):
    final = tmp_path / "series"
    final.mkdir()
    (final / "old.dcm").write_text("old")
    new = tmp_path / ".series.build"
    new.mkdir()
    (new / "new.dcm").write_text("new")
    replace_dir(new, final)
    assert [p.name for p in final.iterdir()] == ["new.dcm"]
    assert [p.name for p in tmp_path.iterdir()] == ["series"]   # no .old left
    fresh = tmp_path / ".fresh.tmp"
    fresh.mkdir()
    replace_dir(fresh, tmp_path / "absent")                     # no old folder to move aside
    assert (tmp_path / "absent").is_dir()


def test_keep_suffix_lets_nibabel_pick_the_format(tmp_path):
    target = tmp_path / "case.1.nii.gz"
    assert temp_name(target, keep_suffix=True).name.endswith(".nii.gz")
    with atomic_path(target, keep_suffix=True) as tmp:
        nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4)), tmp)
    assert target.read_bytes()[:2] == b"\x1f\x8b"                # gzip, as the target's name says
    assert nib.load(target).shape == (2, 2, 2)


@pytest.mark.parametrize("mark", ["tmp", "old"])
@pytest.mark.parametrize("keep", [False, True])
def test_temp_names_are_recognised_and_swept(tmp_path, mark, keep):
    target = tmp_path / "research" / "nifti" / "e1" / "s1.nii.gz"
    target.parent.mkdir(parents=True)
    target.write_text("done")
    tmp = temp_name(target, mark, keep_suffix=keep)
    tmp.write_text("half")
    assert is_temp(tmp.name) and _is_temp(tmp.name)
    assert not is_temp(target.name) and not _is_temp(target.name)
    assert sweep_temp(tmp_path) == 1
    assert [p.name for p in target.parent.iterdir()] == ["s1.nii.gz"]
