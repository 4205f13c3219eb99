"""Header values pydicom cannot decode (an unknown VR from overwritten bytes, a ragged binary value,
an IS that overflows): pydicom converts a raw element on first access and may raise anything then.
One place decides what the stages do with them."""
from __future__ import annotations

from pydicom.dataset import Dataset


def value_or_none(ds: Dataset, keyword: str):
    """``ds.get(keyword)``; None when pydicom cannot decode the stored value."""
    try:
        return ds.get(keyword)
    except Exception:  # noqa: BLE001 - raw values are converted on access and may raise anything
        return None


def drop_undecodable(ds: Dataset) -> Dataset:
    """Remove, in place and recursively (file meta included), every element whose value pydicom
    cannot decode, and return ``ds``. At de-identification such a value cannot be checked for PHI,
    so it does not reach research/ (fail closed); a geometry element dropped so is then
    ``missing_geometry`` in continuity, like any absent one."""
    for d in ([ds.file_meta] if getattr(ds, "file_meta", None) is not None else []) + [ds]:
        bad = []
        for tag in list(d.keys()):
            try:
                elem = d[tag]
                if elem.VR == "SQ":
                    for item in elem.value or []:
                        drop_undecodable(item)
                else:
                    _ = elem.VM, elem.value   # converts a raw element: raises when it cannot
            except Exception:  # noqa: BLE001 - pydicom raises many types for a value it cannot read
                bad.append(tag)
        for tag in bad:
            del d[tag]
    return ds
