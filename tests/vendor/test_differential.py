"""The differential test against dcm2niix (issue 20): every real vendor case the packages ship
and every generated variant (multiband timing, reversed polarity, b=0 with trace, label/control
pairs) curated with every time point written, next to dcm2niix on the same files.

For each dcm2niix output: our series is ``ok`` with the same time-point and slice counts, r ≥
0.99 in world space at every time point, the same b-values and (b > 0) gradients within 1°,
and the same phase-encoding direction; or ours rejects it for a reason docs/vendors.md lists
as a deliberate difference.
"""
from __future__ import annotations

import pytest

from mrifoundry.catalog.views import connect
from bench import vendor_check, vendor_corpus, vendor_variants
from bench.vendor_compare import R_MIN, world_correlations

# dcm2niix converts these; a volume corpus does not (docs/vendors.md, "Differences from dcm2niix")
DOCUMENTED = {"too_few_slices", "localizer_series", "derived_series", "blank_series", "mosaic_grid_mismatch",
              "multiframe_no_geometry", "duplicate_series"}
ALL = [c.name for c in vendor_corpus.CASES] + [v.name for v in vendor_variants.VARIANTS]
VARIANTS = {v.name for v in vendor_variants.VARIANTS}


def _run(tmp_path, name):
    built, missing = vendor_check.build_all(tmp_path / "archives", [name])
    if name in missing:
        pytest.skip(f"source of {name} not installed")
    return vendor_check.check_case(name, built[name], tmp_path / "run")


@pytest.mark.parametrize("name", ALL)
def test_same_as_dcm2niix(tmp_path, name):
    res = _run(tmp_path, name)
    assert res.audit_ok, res.audit_hits
    compared = 0
    for m in res.matches:
        if m["status"] == "derived":          # dcm2niix's _ADC copy; ours is the trace image set
            assert any(s.image_set == "trace" and s.status == "ok" for s in res.series)
            continue
        if m["status"] == "absent":           # no series of ours: only a file no study owns
            assert res.dropped.get("unattributed_file"), m
            continue
        if m["status"] != "ok":
            assert m["reason"] in DOCUMENTED, m
            continue
        assert m["ok"], m
        compared += 1
    if name in VARIANTS:   # each variant is an acquisition we convert: nothing else may be refused
        assert compared >= 1 and all(m["status"] in ("ok", "derived") or m["reason"] == "duplicate_series"
                                     for m in res.matches), res.matches


def _catalog(tmp_path) -> dict:
    con = connect(tmp_path / "run" / "out" / "research")
    try:
        rows = con.execute("SELECT coalesce(image_set, ''), phase_encoding_direction, multiband_factor, b_values, "
                           "asl_context, n_timepoints FROM series WHERE status = 'ok'").fetchall()
    finally:
        con.close()
    return {r[0]: r[1:] for r in rows}


def test_variant_values_reach_the_catalog(tmp_path):
    """What the sidecars say is queryable: multiband factor and b-values of the classic SMS DWI."""
    _run(tmp_path, "siemens-classic-sms-dwi")
    pe, mb, bvals, asl, n_t = _catalog(tmp_path)[""]
    assert (pe, mb, bvals, asl, n_t) == ("j-", 3, "5,1500", None, 3)


def test_asl_pairs_in_acquisition_order_and_order_matters(tmp_path):
    """pCASL: 6 time points in acquisition order (label first in dynamics 1 and 3, control first
    in 2, as the variant was acquired; dcm2niix keeps the same order); a swapped pair would fail
    the r threshold."""
    res = _run(tmp_path, "philips-pcasl")
    assert _catalog(tmp_path)[""][3] == "label,control,control,label,label,control"
    m = next(m for m in res.matches if m["status"] == "ok")
    ours = tmp_path / "run" / "out" / "research" / next(s.nifti for s in res.series if s.status == "ok")
    ref = tmp_path / "run" / "dcm2niix" / f"{m['dcm2niix']}.nii"
    crossed = world_correlations(ours, ref, [(t, t ^ 1) for t in range(6)])
    assert max(crossed) < R_MIN, crossed    # the test can see a swapped pair


def test_ge_pepolar_reversed_volumes_are_their_own_series(tmp_path):
    """GE epi_pepolar alternating: the reversed volumes (stored mirrored) are a series of their
    own with the opposite phase-encoding polarity, matching dcm2niix (which mirrors them back)."""
    res = _run(tmp_path, "ge-epi-pepolar-alternating")
    rows = _catalog(tmp_path)
    assert set(rows) == {"", "reversed"}
    assert {rows[""][0], rows["reversed"][0]} == {"j", "j-"} and rows[""][4] == rows["reversed"][4] == 2
    assert all(m["ok"] for m in res.matches), res.matches
