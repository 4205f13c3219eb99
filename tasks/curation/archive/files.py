"""Archive files as the walk meets them: bytes-safe stored paths, a constant-time DICOM sniff, and a
time limit on header parsing."""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from dataclasses import dataclass
from urllib.parse import quote_from_bytes, unquote_to_bytes


@dataclass(frozen=True)
class WalkLimits:
    """What the archive walk opens, and how much a container may expand (docs/bad-input.md)."""
    follow_symlinks: bool = False                # symlinks to outside the archive are refused unless set
    max_file_bytes: int = 8 << 30                # a larger file is not read (file_too_large)
    max_expanded_bytes: int = 64 << 30           # one container's whole expansion, nested members included
    max_ratio: float = 100.0                     # expanded bytes per compressed byte (zip bombs) …
    ratio_slack_bytes: int = 32 << 20            # … once past this much (tiny archives compress well)
    max_depth: int = 3                           # containers inside containers
    max_members: int = 200_000


# A file name is bytes on POSIX: Latin-1 / Shift-JIS names from Windows exports decode to lone
# surrogates, which Arrow and DuckDB cannot store. Such a path is stored percent-encoded behind a
# prefix no absolute path has; every reader goes through decode_path().
_ENC = "fsb:"


def encode_path(path: str) -> str:
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return _ENC + quote_from_bytes(os.fsencode(path), safe="/")


def decode_path(stored: str) -> str:
    return os.fsdecode(unquote_to_bytes(stored[len(_ENC):])) if stored.startswith(_ENC) else stored


def looks_like_dicom(path: str) -> bool:
    """Cheap sniff before any parse: a Part-10 preamble, or a raw dataset whose first tag is a
    plausible group (ACR-NEMA / implicit VR files). Rejects zero-filled and text files in
    constant time, however large (a forced pydicom parse of 256 MiB of zeros takes minutes)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    group_le, group_be = int.from_bytes(head[0:2], "little"), int.from_bytes(head[0:2], "big")
    # the first element of a raw dataset is in one of the low, even groups (0008,0005) …
    return any(0x0002 <= g <= 0x0030 and g % 2 == 0 for g in (group_le, group_be))


#: a header that takes longer than this to parse (a crafted file, a stalled mount) is not DICOM here
READ_SECONDS = 30.0


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise TimeoutError in the block after ``seconds`` (SIGALRM: the index's worker processes and
    a main thread; elsewhere — a Prefect worker thread — no limit can be set and none is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _alarm(signum, frame):
        raise TimeoutError("header read took too long")
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
