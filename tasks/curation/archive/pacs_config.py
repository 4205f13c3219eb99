"""A PACS's ``dicom://`` URL, parsed into a :class:`PacsConfig` (docs/pacs.md)."""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass(frozen=True)
class PacsConfig:
    """Where the PACS is and how we talk to it (parsed from a ``dicom://`` URL)."""
    called_aet: str
    host: str
    port: int
    calling_aet: str = "MRIFOUNDRY"
    max_assoc: int = 2          # concurrent associations of this process to this PACS
    timeout: float = 30.0       # seconds: TCP connect, ACSE, DIMSE and network idle
    retries: int = 3            # further attempts after the first, with exponential backoff
    backoff: float = 1.0        # seconds before the first retry; doubled each time


def parse_pacs_url(url: str) -> PacsConfig:
    """``dicom://CALLED_AET@host:port?calling=OUR_AET&max_assoc=2&timeout=30&retries=3&backoff=1``.

    Raises:
        ValueError: not a dicom:// URL, missing AE title/host/port, an AE title longer than
            16 characters, an unknown or out-of-range query parameter.
    """
    u = urlsplit(url)
    if u.scheme != "dicom":
        raise ValueError("a PACS URL starts with dicom://")
    called = unquote(u.username or "")
    try:
        port = u.port
    except ValueError as e:
        raise ValueError("PACS URL: invalid port") from e
    if not called or not u.hostname or not port:
        raise ValueError("PACS URL needs dicom://CALLED_AET@host:port")
    q = {k: v[-1] for k, v in parse_qs(u.query, keep_blank_values=True).items()}
    unknown = set(q) - {"calling", "max_assoc", "timeout", "retries", "backoff"}
    if unknown:
        raise ValueError(f"PACS URL: unknown parameter(s) {sorted(unknown)}")
    cfg = PacsConfig(called_aet=called, host=u.hostname, port=port,
                     calling_aet=q.get("calling") or "MRIFOUNDRY", max_assoc=int(q.get("max_assoc", 2)),
                     timeout=float(q.get("timeout", 30)), retries=int(q.get("retries", 3)),
                     backoff=float(q.get("backoff", 1.0)))
    for aet in (cfg.called_aet, cfg.calling_aet):
        if len(aet) > 16:
            raise ValueError("PACS URL: AE titles have at most 16 characters")
    if cfg.max_assoc < 1 or cfg.timeout <= 0 or cfg.retries < 0 or cfg.backoff < 0:
        raise ValueError("PACS URL: max_assoc >= 1, timeout > 0, retries >= 0, backoff >= 0")
    return cfg
