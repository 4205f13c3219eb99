"""The C-STORE side of a PACS C-GET: :class:`Receiver` writes the instances received into a
folder as opaque ``NNNNNN.dcm`` files and keeps their manifest (:data:`MANIFEST`)."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from mrifoundry.atomic import is_temp, write_bytes, write_text

MANIFEST = "pacs_received.jsonl"


class Receiver:
    """The C-STORE side of C-GET: writes instances into ``dest`` and keeps the manifest.

    The manifest is reconciled with the folder on load: files missing on disk are forgotten
    (fetched again), files on disk but not yet listed (killed between rename and append) are
    read back, so no instance is ever stored twice.
    """

    def __init__(self, dest: Path):
        self.dest = Path(dest)
        self.dest.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.by_sop: dict[str, dict] = {}
        self.series = ""           # the series being fetched (the C-STORE request does not say)
        self.written = 0           # instances written by this receiver (resume tests count these)
        self._load()
        self._next = 1 + max((int(r["file"].split(".")[0]) for r in self.by_sop.values()), default=0)

    def _load(self) -> None:
        for p in self.dest.glob(".*"):
            if is_temp(p.name):   # a write cut by a crash
                p.unlink(missing_ok=True)
        path = self.dest / MANIFEST
        rows = []
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut by a crash: its file is picked up below
        for r in rows:
            if (self.dest / r["file"]).exists():
                self.by_sop[r["sop"]] = r
        listed = {r["file"] for r in self.by_sop.values()}
        for p in sorted(self.dest.glob("*.dcm")):
            if p.name in listed:
                continue
            try:
                ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID", "SeriesInstanceUID"])
                sop, series = str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID)
            except (InvalidDicomError, OSError, AttributeError, ValueError, EOFError):
                p.unlink(missing_ok=True)
                continue
            if sop in self.by_sop:
                p.unlink()  # a duplicate from before the manifest existed
            else:
                self.by_sop[sop] = {"file": p.name, "sop": sop, "series": series}
        write_text(path, "".join(json.dumps(r) + "\n" for r in self.by_sop.values()))

    def count(self, series_uid: str) -> int:
        with self.lock:
            return sum(1 for r in self.by_sop.values() if r["series"] == series_uid)

    def handle_store(self, event) -> int:
        """EVT_C_STORE handler: store the instance as received (no decoding); 0x0000 = success."""
        sop = str(event.request.AffectedSOPInstanceUID)
        with self.lock:
            if sop in self.by_sop:
                return 0x0000  # already here: never a second copy
            n, self._next = self._next, self._next + 1
        name = f"{n:06d}.dcm"
        try:
            write_bytes(self.dest / name, event.encoded_dataset(include_meta=True))
        except OSError:
            return 0xA700  # out of resources: the PACS counts a failed sub-operation
        row = {"file": name, "sop": sop, "series": self.series}
        with self.lock:
            self.by_sop[sop] = row
            self.written += 1
            with open(self.dest / MANIFEST, "a") as fh:
                fh.write(json.dumps(row) + "\n")
        return 0x0000

    def files(self) -> list[Path]:
        with self.lock:
            return sorted(self.dest / r["file"] for r in self.by_sop.values())
