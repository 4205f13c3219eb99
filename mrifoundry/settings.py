"""One typed settings object for the whole project (environment variables ``MRIFOUNDRY_*``).

Flow parameters (:class:`CurateParams`) hold only paths, numbers and switches — never PHI —
because Prefect stores them in its database.
"""
from __future__ import annotations

import datetime as dt
import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mrifoundry import REPO_ROOT


def _package_dir(name: str) -> Path:
    """Where an installed subpackage's files are, without importing it (checkout, editable or wheel)."""
    import importlib.util
    spec = importlib.util.find_spec(name)
    return Path(next(iter(spec.submodule_search_locations)))


PACKAGED_RULES = _package_dir("mrifoundry.tasks") / "curation" / "selection" / "duke110k_rules.yaml"


def default_home() -> Path:
    """``./var`` of a checkout (README); installed from a wheel, the user's data directory
    (``$XDG_DATA_HOME/mrifoundry``, else ``~/.local/share/mrifoundry``), never the install location."""
    if (REPO_ROOT / "pyproject.toml").is_file():
        return REPO_ROOT / "var"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "mrifoundry"


class Settings(BaseSettings):
    """Machine-level settings, read from the environment (``MRIFOUNDRY_ARCHIVE`` …)."""

    model_config = SettingsConfigDict(env_prefix="MRIFOUNDRY_", extra="ignore")

    #: project state (Prefect server DB, logs, PIDs, sample archive)
    home: Path = Field(default_factory=default_home)
    #: archive location: a folder, or (later) dicom://AET@host:port
    archive: str | None = None
    #: radiology report export (CSV); optional
    reports: Path | None = None
    #: output root holding restricted/, research/, state/
    out: Path | None = None
    #: secret salt for opaque ids and UID remapping; else OUT/restricted/salt (created once)
    salt: str | None = None

    @property
    def sample_dir(self) -> Path:
        return self.home / "sample"


class CurateParams(BaseModel):
    """Parameters of the ``curate`` flow. Paths and switches only: Prefect stores these."""

    archive: str | None = Field(None, description="archive folder (default: settings / embedded sample)")
    reports: str | None = Field(None, description="report export CSV; None = take every study of the archive")
    out: str | None = Field(None, description="output root (restricted/, research/, state/)")
    rules: str | None = Field(None, description="report-filter rules YAML (default: packaged Duke-110K rules)")
    date_start: dt.date | None = Field(dt.date(2016, 1, 1), description="first report date kept")
    date_end: dt.date | None = Field(dt.date(2020, 12, 31), description="last report date kept")
    n_per_protocol: int = Field(150, ge=1, description="exams sampled per protocol (all when fewer)")
    seed: int = Field(0, description="sampling seed")
    min_slices: int = Field(5, ge=1)
    voxel_size_mm: float | None = Field(1.0, description="isotropic NIfTI resampling; None keeps native spacing")
    nifti_shape: tuple[int, int, int] | None = Field(None, description="fixed NIfTI shape, e.g. [256,256,128] (Triad)")
    nifti_timepoints: Literal["middle", "all"] = Field(
        "middle", description="4D series: middle writes the middle time point (3D corpus); all writes every "
                              "time point as one 4D NIfTI (diffusion, fMRI, ASL work)")
    write_png: bool = True
    write_nifti: bool = True
    rerun: Literal["missing", "failed", "all"] = Field(
        "missing", description="missing: new and failed items; failed: only failed items; all: redo everything"
    )
    workers: int = Field(2, ge=1, description="concurrent tasks")
    batch_size: int = Field(256, ge=1, description="exams submitted at once (bounds memory at Duke scale)")
    qc_per_body_part: int = Field(8, ge=1, description="slices per body part in the QC montage")
    follow_symlinks: bool = Field(False, description="follow symlinks that point outside the archive folder")
    max_file_mb: int = Field(8192, ge=1, description="archive files larger than this are not read (file_too_large)")
    max_container_mb: int = Field(65536, ge=1, description="expansion budget of one zip/tar/gzip, nesting included")
    max_container_ratio: float = Field(100.0, gt=1, description="expanded/compressed size above which a container "
                                                                "is refused (past 32 MiB)")


    @field_validator("nifti_shape", mode="before")
    @classmethod
    def _shape(cls, v):
        if v in (None, "", [], ()):
            return None
        return tuple(int(x) for x in v)


def load_salt(out: Path, settings: Settings | None = None) -> str:
    """The salt: ``MRIFOUNDRY_SALT`` or ``OUT/restricted/salt``, created once with 256 random bits."""
    settings = settings or Settings()
    if settings.salt:
        return settings.salt
    path = out / "restricted" / "salt"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(secrets.token_hex(32))
    os.chmod(tmp, 0o600)
    try:
        # link() fails if another process created the salt first: then theirs wins
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()
