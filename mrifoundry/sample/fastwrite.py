"""Write the slices of one uncompressed series ~5x faster than ``Dataset.save_as``.

The series template is encoded once, cut into byte segments around the per-slice
elements; each slice then encodes only its few changing elements and concatenates.
The output is byte-identical to pydicom's own ``save_as(enforce_file_format=True)``
(a test checks it), so it is exactly as valid as pydicom's files.
"""
from __future__ import annotations

import struct
from pathlib import Path

from pydicom import __version_info__
from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_dataset
from pydicom.tag import Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ImplicitVRLittleEndian

PIXEL_DATA = 0x7FE00010
VERSION_NAME = f"PYDICOM {'.'.join(__version_info__)}"


def _bytes_io(implicit: bool) -> DicomBytesIO:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    return fp


def _meta_element(elem: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0" if vr == b"UI" else b" "
    if vr == b"OB":
        return struct.pack("<HH2sHI", 0x0002, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, elem, vr, len(value)) + value


class SeriesWriter:
    """Writes Part-10 files that share ``template`` except for the elements in ``dynamic``.

    ``dynamic`` maps tag → VR; per slice, ``write`` gets tag → value (None = element absent).
    """

    def __init__(self, template: Dataset, dynamic: dict[int, str]):
        self.implicit = template.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        self.dynamic = {int(Tag(t)): vr for t, vr in dynamic.items()}
        self.encodings = convert_encodings(template.get("SpecificCharacterSet", "ISO_IR 100"))
        cuts = sorted(self.dynamic) + [0xFFFFFFFF]
        self.segments: list[bytes] = []
        lo = -1
        for hi in cuts:
            part = Dataset()
            for elem in template:
                if lo < elem.tag < hi and elem.tag not in self.dynamic:
                    part.add(elem)
            fp = _bytes_io(self.implicit)
            write_dataset(fp, part, self.encodings)
            self.segments.append(fp.getvalue())
            lo = hi
        self.order = cuts[:-1]
        ts = template.file_meta.TransferSyntaxUID
        self.sop_class = str(template.SOPClassUID).encode()
        self.meta_tail = (_meta_element(0x0010, b"UI", str(ts).encode())
                          + _meta_element(0x0012, b"UI", str(PYDICOM_IMPLEMENTATION_UID).encode())
                          + _meta_element(0x0013, b"SH", VERSION_NAME.encode()))

    def _meta(self, sop_uid: str) -> bytes:
        body = (_meta_element(0x0001, b"OB", b"\x00\x01") + _meta_element(0x0002, b"UI", self.sop_class)
                + _meta_element(0x0003, b"UI", sop_uid.encode()) + self.meta_tail)
        return struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body)) + body

    def encode(self, values: dict[int, object]) -> bytes:
        """The whole file (preamble, meta, dataset) for one slice; values[SOPInstanceUID] is required."""
        out = [b"\0" * 128, b"DICM", self._meta(str(values[0x00080018]))]
        for seg, tag in zip(self.segments, self.order):
            out.append(seg)
            value = values.get(tag)
            if value is not None:
                fp = _bytes_io(self.implicit)
                write_data_element(fp, DataElement(tag, self.dynamic[tag], value), self.encodings)
                out.append(fp.getvalue())
        out.append(self.segments[-1])
        return b"".join(out)

    def write(self, path: Path, values: dict[int, object]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.encode(values))
