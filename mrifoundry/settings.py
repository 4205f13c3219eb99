"""One typed settings object for the whole project (environment variables ``MRIFOUNDRY_*``).

The parameters of each pipeline are in :mod:`mrifoundry.params`.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from pydantic import Field
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
    #: MB of de-identified datasets one curation thread keeps for its exam's later stages
    #: (tasks/curation/exam_reads.py); 0 reads every file back from disk
    exam_reads_mb: float = Field(default=256.0, ge=0)

    @property
    def sample_dir(self) -> Path:
        return self.home / "sample"


def expand_home(v: str | None, settings: Settings | None = None) -> str | None:
    """``{home}`` in a path parameter → MRIFOUNDRY_HOME."""
    return v.replace("{home}", str((settings or Settings()).home)) if isinstance(v, str) else v


def research_dir(out: str | None, settings: Settings | None = None) -> Path:
    """``OUT/research`` of a pipeline's ``out`` parameter (default MRIFOUNDRY_OUT, else HOME/out)."""
    s = settings or Settings()
    root = Path(expand_home(out, s)) if out else (s.out or s.home / "out")
    return Path(root).resolve() / "research"


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
