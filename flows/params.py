"""Resolve flow parameters against settings: placeholders, the embedded sample, defaults."""
from __future__ import annotations

from pathlib import Path

from mrifoundry.errors import UsageError
from mrifoundry.params import CurateParams
from mrifoundry.settings import Settings, expand_home

SAMPLE = "sample"


def resolve(params: CurateParams, settings: Settings | None = None) -> CurateParams:
    """Fill archive/reports/out from settings; ``sample`` names the embedded sample archive
    (generated on first use); ``{home}`` expands to MRIFOUNDRY_HOME.

    Raises:
        UsageError: no archive given and none configured.
    """
    s = settings or Settings()
    archive, reports, out = (expand_home(v, s) for v in (params.archive, params.reports, params.out))
    if archive is None:
        archive = s.archive
        if reports is None and s.reports:
            reports = str(s.reports)
    if archive == SAMPLE or reports == SAMPLE:
        ensure_sample(s.sample_dir)
        if archive == SAMPLE:
            archive = str(s.sample_dir / "archive")
        if reports == SAMPLE:
            reports = str(s.sample_dir / "reports.csv")
    if archive is None:
        raise UsageError("no archive: pass --archive (archive=…) or set MRIFOUNDRY_ARCHIVE (or archive=sample)")
    if out is None:
        out = str(s.out or (s.home / "out"))
    return params.model_copy(update={"archive": archive, "reports": reports, "out": str(Path(out).resolve())})


def ensure_sample(sample_dir: Path, seed: int = 0) -> Path:
    """Generate the embedded sample archive once (≤ 60 s)."""
    if (sample_dir / "manifest.json").exists():
        return sample_dir
    if sample_dir.exists():  # an interrupted generation (the manifest is written last)
        import shutil
        shutil.rmtree(sample_dir)
    from mrifoundry.sample import generate_sample
    generate_sample(sample_dir, seed=seed)
    return sample_dir
