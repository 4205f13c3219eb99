"""A throw-away Orthanc (deploy/orthanc.sh) on free loopback ports, holding a few sample exams."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "orthanc.sh"
AET, CLIENT_AET = "TESTPACS", "MRIFOUNDRY"
# exams Orthanc accepts whole (the truncated-file exam would lose a file on upload): a
# JPEG-LS series, a basic text SR, a CT series, and one exam without defects
DEFECTS = ("jpegls_lossless", "non_image_object", "non_mr_modality")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Orthanc:
    home: Path
    dicom_port: int
    http_port: int

    def _run(self, *args: str) -> None:
        env = dict(os.environ, ORTHANC_HOME=str(self.home), ORTHANC_AET=AET, ORTHANC_CLIENT_AET=CLIENT_AET)
        r = subprocess.run([str(SCRIPT), *args], env=env, timeout=300, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"orthanc.sh {args[0]} failed:\n{r.stdout}\n{r.stderr}")

    def start(self) -> None:
        self._run("start", str(self.dicom_port), str(self.http_port))

    def stop(self) -> None:
        self._run("stop")

    def kill(self) -> None:
        """SIGKILL the whole process group by PID: a hard cut, no graceful end of transfers."""
        pid = int((self.home / "orthanc.pid").read_text())
        os.killpg(pid, signal.SIGKILL)
        (self.home / "orthanc.pid").unlink()

    def url(self, called: str = AET, calling: str = CLIENT_AET, **q) -> str:
        query = "&".join([f"calling={calling}"] + [f"{k}={v}" for k, v in q.items()])
        return f"dicom://{called}@127.0.0.1:{self.dicom_port}?{query}"

    def rest(self, method: str, path: str, data: bytes | None = None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/dicom"} if data else {})
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
        return json.loads(body) if body else None

    def upload(self, files: list[Path]) -> list[str]:
        """POST each file to /instances; returns Orthanc's instance ids."""
        return [self.rest("POST", "/instances", p.read_bytes())["ID"] for p in files]


def pick_exams(manifest: dict) -> list[dict]:
    """The exams the PACS tests use: one per defect of DEFECTS plus one clean, non-facial exam."""
    inside = [e for e in manifest["exams"] if e.get("in_archive") and e.get("study_dir")]
    chosen = [next(e for e in inside if any(s.get("defect") == d for s in e["series"])) for d in DEFECTS]
    chosen.append(next(e for e in inside if not e.get("facial") and not any(s.get("defect") for s in e["series"])
                       and "2016" <= e["report_date"][:4] <= "2020" and e["accession_number"]))
    return chosen


def exam_files(sample: Path, exam: dict) -> list[Path]:
    return sorted(p for p in (sample / "archive" / exam["study_dir"]).rglob("*") if p.is_file())


def start_orthanc(tmp: Path, sample: Path, exams: list[dict]) -> Orthanc:
    o = Orthanc(tmp, free_port(), free_port())
    o.start()
    for e in exams:
        o.upload(exam_files(sample, e))
    return o


@pytest.fixture(scope="module")
def pacs_exams(manifest) -> list[dict]:
    return pick_exams(manifest)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, sample, pacs_exams):
    """Orthanc holding ``pacs_exams`` (installed with apt-get when missing), stopped at the end."""
    o = start_orthanc(tmp_path_factory.mktemp("orthanc"), sample, pacs_exams)
    yield o
    o.stop()
