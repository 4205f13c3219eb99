"""The package as a wheel, outside the checkout (issue 21): one import root, package data
found, the sample curated by the plain runner from another directory."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.flows.helpers import copy_exams

REPO = Path(__file__).resolve().parents[1]

# run without site (-S): the checkout's editable finder (a .pth) must not answer for mrifoundry;
# the dependencies come from the environment's site-packages, appended after the install target
_PROBE = r"""
import importlib.util, json, sys
sys.path[:0] = [sys.argv[1]]
sys.path.append(sys.argv[2])
import mrifoundry, mrifoundry.tasks.curation.runner as runner
from mrifoundry.params import CurateParams
from mrifoundry.settings import PACKAGED_RULES
bare = [n for n in ("tasks", "flows", "models", "catalog") if importlib.util.find_spec(n) is not None]
res = runner.run_curation(CurateParams(archive=sys.argv[3], reports=None, out=sys.argv[4], workers=1,
                                       write_nifti=False, phi_audit=False))
from mrifoundry.settings import Settings
from mrifoundry.flows.runners import DEPLOY
print(json.dumps({"file": mrifoundry.__file__, "bare": bare, "rules": str(PACKAGED_RULES),
                  "rules_exist": PACKAGED_RULES.is_file(), "catalog": res["catalog"], "home": str(Settings().home),
                  "slurm": str(DEPLOY / "slurm.yaml"), "slurm_exists": (DEPLOY / "slurm.yaml").is_file()}))
"""


def test_wheel_has_one_import_root_and_curates_outside_the_checkout(tmp_path, manifest, sample):
    wheels, target, src = tmp_path / "wheels", tmp_path / "site", tmp_path / "src"
    # built from a copy of the sources git sees: nothing stale (an old build/) gets in, none is left behind
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.split("\n")
    for rel in filter(None, listed):
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(wheels), str(src)], check=True, capture_output=True, timeout=600)
    wheel = next(wheels.glob("mrifoundry-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    # one package (bin/ holds the console script)
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info")) == ["bin", "mrifoundry"]
    for data in ("tasks/curation/deid/ps315_basic_profile.csv", "tasks/curation/selection/duke110k_rules.yaml",
                 "deploy/prefect.yaml", "deploy/dask/slurm.yaml", "deploy/constraints.txt", "deploy/server.sh"):
        assert (target / "mrifoundry" / data).is_file(), data
    one = next(e for e in manifest["exams"] if e.get("in_archive") and e.get("study_dir")
               and not any(s.get("defect") for s in e["series"]))
    copy_exams(manifest, sample, tmp_path / "archive", lambda e: e is one)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "user"), "XDG_DATA_HOME": str(tmp_path / "xdg")}
    p = subprocess.run([sys.executable, "-S", "-c", _PROBE, str(target), sysconfig.get_paths()["purelib"],
                        str(tmp_path / "archive"), str(tmp_path / "out")],
                       cwd=elsewhere, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["file"].startswith(str(target)) and got["bare"] == []
    assert got["rules_exist"] and got["rules"].startswith(str(target))
    assert got["catalog"]["exams"] == 1 and got["catalog"]["slices"] > 0
    # state in the user's data directory, not the install location; cluster specs from the package
    assert got["home"] == str(tmp_path / "xdg" / "mrifoundry")
    assert got["slurm_exists"] and got["slurm"].startswith(str(target))
