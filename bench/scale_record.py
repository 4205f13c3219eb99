"""The scale section recorded for ``make bench``: the opt-in run (an hour on 2 cores) is stored by
``python -m bench.scale … --record`` and included in docs/benchmarks.md when not run live."""
from __future__ import annotations

import json
import time

from bench.common import REPO

#: the last opt-in run's section, included by ``make bench`` (bench/run.py) when it does not run it
RECORDED = REPO / "bench" / "results" / "scale.json"


def record(sec: dict, command: str) -> None:
    """Store ``sec`` (tables and targets; the raw runs stay out) with when, where and how it ran."""
    from bench.common import machine
    RECORDED.write_text(json.dumps({"tables": sec["tables"], "targets": sec["targets"], "command": command,
                                    "date": time.strftime("%Y-%m-%d"), "machine": machine()},
                                   indent=1, default=str))


def recorded_section() -> dict:
    """The recorded section for docs/benchmarks.md, its tables marked as recorded (date, command)."""
    rec = json.loads(RECORDED.read_text())
    where = f"recorded {rec['date']} by `{rec['command']}`"
    tables = [{**t, "title": f"{t['title']} ({where})"} for t in rec["tables"]]
    return {"tables": tables, "targets": [{**t, "name": t["name"] + " (recorded)"} for t in rec["targets"]],
            "raw": None}
