"""Stage 2: per-protocol sampling.

N exams per protocol, at most one exam per patient across the whole sample, all of a
protocol's exams when it has fewer eligible patients. Reproducible: each protocol draws
from its own generator, seeded by (seed, protocol), so adding a protocol to the export
does not change the sample of the others.
"""
from __future__ import annotations

import hashlib

import numpy as np


def protocol_rng(seed: int, protocol: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}\x00{protocol}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def sample_exams(rows: list[dict], n_per_protocol: int, seed: int) -> list[dict]:
    """Choose exams from the kept reports.

    Protocols are visited from the fewest distinct patients to the most (ties by name),
    so rare protocols get their patients before common ones take them; within a protocol,
    exams are shuffled by the protocol's generator and taken while their patient is new.

    Args:
        rows: kept reports with ``accession_number``, ``patient_mrn``, ``protocol``.
        n_per_protocol: exams per protocol.
        seed: sampling seed.

    Returns:
        The chosen rows (same dicts), ordered by protocol then accession.
    """
    by_protocol: dict[str, list[dict]] = {}
    for r in rows:
        by_protocol.setdefault(r["protocol"], []).append(r)
    order = sorted(by_protocol, key=lambda p: (len({r["patient_mrn"] for r in by_protocol[p]}), p))
    used_patients: set[str] = set()
    chosen: list[dict] = []
    for protocol in order:
        # sort first so the shuffle does not depend on the export's row order
        pool = sorted(by_protocol[protocol], key=lambda r: r["accession_number"])
        perm = protocol_rng(seed, protocol).permutation(len(pool))
        taken = 0
        for i in perm:
            if taken >= n_per_protocol:
                break
            r = pool[int(i)]
            if r["patient_mrn"] in used_patients:
                continue
            used_patients.add(r["patient_mrn"])
            chosen.append(r)
            taken += 1
    return sorted(chosen, key=lambda r: (r["protocol"], r["accession_number"]))
