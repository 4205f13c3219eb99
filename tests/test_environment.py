"""The installed environment: nothing in site-packages shadows a standard-library module.

PyPI's ``argparse`` 1.4 backport (pulled by nnunetv2 → batchgenerators → unittest2) took the
standard library's place in any process that puts site-packages first on ``sys.path`` — Prefect's
temporary server does (uvicorn ``--app-dir``) and then failed to start. The Makefile removes it.
"""
from __future__ import annotations

import sys
import sysconfig
from pathlib import Path


def shadows(site: Path) -> list[str]:
    """Top-level modules and packages in ``site`` named like a standard-library module."""
    names = {p.stem if p.suffix == ".py" else p.name for p in site.iterdir()
             if p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())}
    return sorted(names & set(sys.stdlib_module_names))


def test_no_stdlib_module_is_shadowed():
    assert shadows(Path(sysconfig.get_paths()["purelib"])) == []


def test_the_check_sees_a_shadow(tmp_path):
    (tmp_path / "argparse.py").write_text("")
    (tmp_path / "fine_pkg").mkdir()
    (tmp_path / "fine_pkg" / "__init__.py").write_text("")
    assert shadows(tmp_path) == ["argparse"]
