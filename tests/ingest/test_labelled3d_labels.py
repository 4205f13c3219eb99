"""Label selection/merging: value maps, ordered regions (later wins), strict mode, bad mappings."""
from __future__ import annotations

import numpy as np
import pytest

from mrifoundry.tasks.ingest.labels import parse_labels
from mrifoundry.tasks.ingest.labels import CaseError

BRATS = np.array([0, 1, 2, 4, 4, 2, 0, 3], dtype=np.uint8)  # 3 is not a BraTS 2021 value
NAMES = {1: "necrotic_core", 2: "edema", 4: "enhancing"}


def test_value_map_merges_and_names_outputs():
    m = parse_labels({"1": 1, "2": 1, 4: 2}, NAMES)
    out = m.apply(BRATS, "c")
    assert out.tolist() == [0, 1, 1, 2, 2, 1, 0, 0]  # 3 unmapped → background
    assert m.names == {0: "background", 1: "necrotic_core+edema", 2: "enhancing"}


def test_regions_are_ordered_later_wins_so_nesting_is_recoverable():
    m = parse_labels({"whole_tumor": [1, 2, 4], "tumor_core": [1, 4], "enhancing": [4]}, NAMES)
    out = m.apply(BRATS, "c")
    assert out.tolist() == [0, 2, 1, 3, 3, 1, 0, 0]
    assert m.names == {0: "background", 1: "whole_tumor", 2: "tumor_core", 3: "enhancing"}
    # each region is label >= its value: the same voxels as the union of its source values
    for value, src in ((1, [1, 2, 4]), (2, [1, 4]), (3, [4])):
        assert np.array_equal(out >= value, np.isin(BRATS, src))
    # the other order loses the inner regions: the outer one is listed last and takes every value
    assert parse_labels({"enhancing": [4], "whole_tumor": [1, 2, 4]}).apply(BRATS, "c").max() == 2


def test_strict_refuses_unmapped_values():
    with pytest.raises(CaseError, match=r"\[3\]"):
        parse_labels({1: 1, 2: 2, 4: 3}, strict=True).apply(BRATS, "case x")
    assert parse_labels({1: 1, 2: 2, 3: 3, 4: 4}, strict=True).apply(BRATS, "c").tolist() == BRATS.tolist()


@pytest.mark.parametrize("bad, match", [
    ({"a": [0, 1]}, "background"), ({"a": []}, "no values"), ({1: 300}, "0..255"), ({"x": 1}, "not an integer"),
    ({1: 1.5}, "not an integer"), ({"a": [1], 2: 2}, "either"), ({1: True}, "not an integer"),
])
def test_malformed_mappings(bad, match):
    with pytest.raises(ValueError, match=match):
        parse_labels(bad)


def test_no_mapping_is_none():
    assert parse_labels(None) is None and parse_labels({}) is None
