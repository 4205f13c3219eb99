"""Simultaneous multi-slice (multiband) series: the slices excited together share one
AcquisitionTime, so a shot is not a volume (issue 20, part 1). Volumes are the k-th occurrence of
each slice position in InstanceNumber order, as dcm2niix assembles them."""
from __future__ import annotations

import datetime as dt

import pydicom
import pytest

from mrifoundry.tasks.curation.continuity.checks import ContinuityConfig, check_series
from tests.dicom_factory import write_series

TR = 2.0


def _sms_series(folder, n_slices: int, mb: int, n_time: int, shuffle_times: bool = False):
    """Volume-major files; slice k of volume t acquired in shot k mod (n_slices/mb)."""
    paths = write_series(folder, n_slices=n_slices, n_time=n_time, time_major=True)
    shots = n_slices // mb
    start = dt.datetime(2020, 1, 1, 10, 0, 0)
    for i, path in enumerate(paths):
        t, k = divmod(i, n_slices)
        ds = pydicom.dcmread(path)
        ds.AcquisitionTime = (start + dt.timedelta(seconds=t * TR + (k % shots) * TR / shots)).strftime("%H%M%S.%f")
        ds.save_as(path)
    return paths


@pytest.mark.parametrize("n_slices,mb", [(20, 2), (10, 5), (12, 3), (12, 1)])
def test_multiband_volumes_are_whole_slabs(tmp_path, n_slices, mb):
    paths = _sms_series(tmp_path / "s", n_slices, mb, n_time=4)
    chk = check_series("s", paths, ContinuityConfig(min_slices=5))
    assert chk.status == "ok", (chk.reason, chk.message)
    assert len(chk.volumes) == 4 and all(len(v.files) == n_slices for v in chk.volumes)
    for t, vol in enumerate(chk.volumes):   # volume t holds exactly the files of volume t
        numbers = sorted(int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber) for f in vol.files)
        assert numbers == list(range(t * n_slices + 1, (t + 1) * n_slices + 1))


def test_acquisition_time_per_volume_still_splits(tmp_path):
    """Classic 4D: one AcquisitionTime per volume, slice-major numbering (DCE): split by time."""
    paths = write_series(tmp_path / "d", n_slices=8, n_time=3, time_major=False, temporal_tags="acqtime")
    chk = check_series("d", paths, ContinuityConfig(min_slices=5))
    assert chk.status == "ok" and [len(v.files) for v in chk.volumes] == [8, 8, 8]
