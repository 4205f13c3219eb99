"""``mrifoundry`` command: the non-Prefect entry points (they call the same functions the flows do)."""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from mrifoundry.flows.params import research_dir

from mrifoundry.flows.console import (  # noqa: F401 - the verbs below call them by these names (tests patch them here)
    QUIET_PRIVATE_ENV, _check_inputs, _check_not_busy, _debug, _expected_failure, _one_line, _prepare_prefect,
    quiet_private_env, run_verb, start_quiet_temporary_server,
)


def _cmd_curate(a) -> int:
    _check_inputs({"--archive": a.archive, "--reports": a.reports, "--rules": a.rules})
    _check_not_busy(a.out)
    shape = [int(x) for x in a.nifti_shape.split("x")] if a.nifti_shape else None
    kwargs = dict(archive=a.archive, reports=a.reports, out=a.out, rules=a.rules,
                  date_start=dt.date.fromisoformat(a.date_start) if a.date_start else None,
                  date_end=dt.date.fromisoformat(a.date_end) if a.date_end else None,
                  n_per_protocol=a.n_per_protocol, seed=a.seed, min_slices=a.min_slices,
                  voxel_size_mm=None if a.voxel_size == 0 else a.voxel_size, nifti_shape=shape,
                  nifti_timepoints=a.nifti_timepoints, write_png=not a.no_png, write_nifti=not a.no_nifti,
                  rerun=a.rerun, workers=a.workers, follow_symlinks=a.follow_symlinks, max_file_mb=a.max_file_mb,
                  max_container_mb=a.max_container_mb, max_container_ratio=a.max_container_ratio)
    if a.prefect or a.runner != "threads":   # through the flow: tasks, artifacts, retries, Dask/SLURM
        from mrifoundry.flows.curate import curate
        _prepare_prefect(a)
        res = curate(**kwargs, runner=a.runner, phi_audit=not a.no_phi_audit)
    else:   # the plain runner: no Prefect server to start (tasks/curation/runner.py)
        from mrifoundry.flows.params import resolve
        from mrifoundry.params import CurateParams
        from mrifoundry.tasks.curation.runner import run_curation
        params = resolve(CurateParams(**{k: v for k, v in kwargs.items() if k in CurateParams.model_fields}))
        tty = sys.stderr.isatty()
        res = run_curation(params, phi_audit=not a.no_phi_audit,
                           progress=(lambda line: print(line, file=sys.stderr)) if tty else (lambda line: None))
    print(json.dumps(res, indent=1, default=str))
    return 0


def _cmd_ingest(a) -> int:
    _check_inputs({"--bids": a.bids, "--nifti": a.nifti})
    from mrifoundry.flows.ingest import ingest
    _prepare_prefect(a)
    shape = [int(x) for x in a.nifti_shape.split("x")] if a.nifti_shape else None
    res = ingest(bids=a.bids, nifti=a.nifti, dataset=a.dataset, out=a.out,
                 voxel_size_mm=None if a.voxel_size == 0 else a.voxel_size, nifti_shape=shape, body_part=a.body_part,
                 rerun=a.rerun, workers=a.workers, phi_audit=not a.no_phi_audit)
    print(json.dumps(res, indent=1, default=str))
    return 0


def _cmd_export_bids(a) -> int:
    from mrifoundry.tasks.data.bids_export import export_bids, validate_bids
    res = export_bids(research_dir(a.out), a.query, Path(a.dest), name=a.name)
    if a.validate:
        res["validator"] = validate_bids(Path(a.dest))
    print(json.dumps(res, indent=1))
    return 1 if a.validate and res["validator"]["errors"] else 0


def _cmd_ingest_downstream(a) -> int:
    _check_inputs({"the dataset folder": a.root})
    from mrifoundry.flows.downstream import ingest_downstream_flow
    _prepare_prefect(a)
    res = ingest_downstream_flow(root=a.root, dataset_id=a.dataset_id, out=a.out, layout=a.layout,
                                 labels=json.loads(a.labels) if a.labels else None, strict_labels=a.strict_labels,
                                 voxel_size_mm=None if a.voxel_size == 0 else a.voxel_size,
                                 split=tuple(float(x) for x in a.split.split(",")), folds=a.folds or None, seed=a.seed)
    print(json.dumps(res, indent=1, default=str))
    return 0


def _cmd_overlap(a) -> int:
    from mrifoundry.tasks.evaluation.overlap import exclude_overlap, overlap
    res = overlap(research_dir(a.out), a.query, a.dataset_id)
    if a.sql:
        res["exclude_sql"] = exclude_overlap(a.query, a.dataset_id)
    print(json.dumps(res, indent=1))
    return 0


def _cmd_finetune3d(a) -> int:
    from mrifoundry.flows.finetune import classify_3d, finetune_3d
    _prepare_prefect(a)
    fr = [float(x) for x in a.label_fractions.split(",")] if a.label_fractions else None
    common = dict(dataset_id=a.dataset_id, out=a.out, model=a.model, weights=a.weights, arch=a.arch,
                  pretrained=a.pretrained, iterations=a.iterations, roi=a.roi, lr=a.lr, encoder_lr=a.encoder_lr,
                  seed=a.seed, label_fractions=fr, preset=a.preset,
                  overrides=json.loads(a.overrides) if a.overrides else None, eval_id=a.eval_id)
    res = (classify_3d(mode=a.mode, **common) if a.task == "classify-3d"
           else finetune_3d(decoder=a.decoder, freeze=a.freeze or None, **common))
    print(json.dumps(res, indent=1, default=str))
    return 0


_UNRESTRICTED_HINT = "use --unrestricted to lift this (power users; it can read the restricted zone)"


def _cmd_sql(a) -> int:
    import duckdb
    from mrifoundry.catalog.views import RefusedStatement, check_read_query, connect, connect_confined
    from mrifoundry.errors import EXIT_USAGE
    research = research_dir(a.out)
    con = connect(research) if a.unrestricted else connect_confined(research)
    try:
        if not a.unrestricted:
            check_read_query(con, a.query)
        cur = con.execute(a.query)
        cols = [d[0] for d in cur.description] if cur.description else []
        rows = cur.fetchall()
    except (RefusedStatement, duckdb.Error) as e:
        if _debug(a):
            raise
        first = _one_line(e)
        if isinstance(e, RefusedStatement):
            msg = f"{first}; {_UNRESTRICTED_HINT}"
        elif not a.unrestricted and (isinstance(e, duckdb.PermissionException) or "configuration has been locked" in first):
            msg = f"{first} (the research SQL entry point reads only {research}/); {_UNRESTRICTED_HINT}"
        else:
            msg = first
        print(f"mrifoundry sql: {msg}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        con.close()
    if a.format == "csv":
        import csv
        w = csv.writer(sys.stdout)
        w.writerow(cols)
        w.writerows(rows)
    elif a.format == "json":
        print(json.dumps([dict(zip(cols, r)) for r in rows], default=str, indent=1))
    else:
        widths = [max([len(str(c))] + [len(str(r[i])) for r in rows]) for i, c in enumerate(cols)]
        print(" | ".join(str(c).ljust(w) for c, w in zip(cols, widths)))
        print("-+-".join("-" * w for w in widths))
        for r in rows:
            print(" | ".join(str(v).ljust(w) for v, w in zip(r, widths)))
        print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return 0


def _cmd_sample(a) -> int:
    from mrifoundry.sample import generate_sample
    from mrifoundry.settings import Settings
    out = Path(a.out) if a.out else Settings().sample_dir
    if (out / "manifest.json").exists() and not a.force:
        m = json.loads((out / "manifest.json").read_text())
        print(f"sample archive already at {out} (seed {m['seed']}); --force regenerates it")
    else:
        if a.force and out.exists():
            import shutil
            shutil.rmtree(out)
        m = generate_sample(out, seed=a.seed)
        print(f"sample archive written to {out}")
    print(json.dumps(m.get("counts", {}), indent=1))
    return 0


def _cmd_phi_audit(a) -> int:
    from mrifoundry.tasks.curation.audit.phi_audit import audit_output
    rep = audit_output(Path(a.out), Path(a.reports) if a.reports else None)
    print(rep.to_markdown())
    return 0 if rep.ok else 1


def _cmd_catalog_docs(a) -> int:
    from mrifoundry.catalog.docs import render_catalog_doc
    text = render_catalog_doc()
    if a.check:
        cur = Path(a.path).read_text() if Path(a.path).exists() else ""
        if cur != text:
            print(f"{a.path} is out of date: run `mrifoundry catalog-docs`", file=sys.stderr)
            return 1
        return 0
    Path(a.path).write_text(text)
    return 0


def _cmd_pretrain(a) -> int:
    from mrifoundry.flows.pretrain import pretrain
    _prepare_prefect(a)
    res = pretrain(out=a.out, query=a.query, recipe=a.recipe, init_weights=a.init_weights, run_name=a.run_name,
                   nproc=a.nproc, resume=not a.restart, overrides=json.loads(a.overrides) if a.overrides else None,
                   stage2_query=a.stage2_query, exclude_overlap=a.exclude_overlap)
    print(json.dumps(res, indent=1, default=str))
    return 0


def _cmd_features(a) -> int:
    from mrifoundry.flows.features import extract_features_flow
    _prepare_prefect(a)
    res = extract_features_flow(out=a.out, query=a.query, model=a.model, weights=a.weights, arch=a.arch,
                                image_size=a.image_size, feature_set=a.feature_set, batch_size=a.batch_size,
                                patch_grids=a.patch_grids, pool=a.pool, pretrained=a.pretrained)
    print(json.dumps(res, indent=1, default=str))
    return 0


def _cmd_demo_eval(a) -> int:
    from mrifoundry.flows.demo_eval import demo_eval
    _prepare_prefect(a)
    print(json.dumps(demo_eval(out=a.out), indent=1, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    quiet_private_env()
    p = argparse.ArgumentParser(prog="mrifoundry", description=__doc__)
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of an expected failure (also MRIFOUNDRY_DEBUG=1)")
    sub = p.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("curate", help="curate a folder archive or a PACS (one-off: the plain runner, or the "
                                      "Prefect flow with --prefect)")
    c.add_argument("--archive", required=True, help="folder of DICOM (any layout), 'sample', or a PACS: dicom://AET@host:port?calling=OURAET (docs/pacs.md)")
    c.add_argument("--reports", help="report export CSV; without it every study of the archive is curated")
    c.add_argument("--out", required=True, help="output root")
    c.add_argument("--rules", help="report-filter rules YAML")
    c.add_argument("--date-start", default="2016-01-01")
    c.add_argument("--date-end", default="2020-12-31")
    c.add_argument("--n-per-protocol", type=int, default=150)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--min-slices", type=int, default=5)
    c.add_argument("--voxel-size", type=float, default=1.0, help="isotropic mm; 0 keeps native spacing")
    c.add_argument("--nifti-shape", help="e.g. 256x256x128 (Triad)")
    c.add_argument("--nifti-timepoints", choices=("middle", "all"), default="middle",
                   help="4D series: the middle time point (default) or all of them in one 4D NIfTI")
    c.add_argument("--no-png", action="store_true")
    c.add_argument("--no-nifti", action="store_true")
    c.add_argument("--rerun", choices=["missing", "failed", "all"], default="missing")
    c.add_argument("--workers", type=int, default=2, help="concurrent tasks (threads or Dask worker processes)")
    c.add_argument("--no-phi-audit", action="store_true", help="skip the final PHI audit")
    c.add_argument("--runner", default="threads", help="threads | dask | dask://host:port | slurm (dask and "
                                                        "slurm run through the Prefect flow)")
    c.add_argument("--prefect", action="store_true",
                   help="run through the Prefect flow (task states, artifacts, `prefect flow-run retry`); "
                        "default: the plain runner, no server")
    c.add_argument("--follow-symlinks", action="store_true",
                   help="follow symlinks that point outside the archive (default: ledgered outside_archive)")
    c.add_argument("--max-file-mb", type=int, default=8192, help="larger archive files are not read (default 8192)")
    c.add_argument("--max-container-mb", type=int, default=65536,
                   help="expansion budget of one zip/tar/gzip, nested ones included (default 65536)")
    c.add_argument("--max-container-ratio", type=float, default=100.0,
                   help="refuse a container that expands more than this many times its size, past 32 MiB "
                        "(zip bombs; default 100)")
    c.set_defaults(fn=_cmd_curate)

    g = sub.add_parser("ingest", help="ingest a BIDS dataset or a NIfTI folder into the catalog (flow ingest)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--bids", help="BIDS dataset root (dataset_description.json, sub-*/)")
    src.add_argument("--nifti", help="folder of NIfTI files; subject = first folder level")
    g.add_argument("--out", help="output root (the same as curate's, to add to its catalog)")
    g.add_argument("--dataset", help="collection name stored in exams.dataset (default: the folder name)")
    g.add_argument("--voxel-size", type=float, default=1.0, help="isotropic mm; 0 keeps the native spacing")
    g.add_argument("--nifti-shape", help="fixed output shape, e.g. 256x256x128")
    g.add_argument("--body-part", help="body part when the sidecars do not say (e.g. brain)")
    g.add_argument("--rerun", choices=["failed", "all"], default="failed")
    g.add_argument("--workers", type=int, default=2, help="threads (one exam each at a time)")
    g.add_argument("--no-phi-audit", action="store_true")
    g.set_defaults(fn=_cmd_ingest)

    dd = sub.add_parser("ingest-downstream", help="a 3D downstream dataset (MSD/nnU-Net, BraTS, images+labels, "
                                                  "DICOM-SEG, classification CSV) into labelled_volumes")
    dd.add_argument("root", help="dataset folder, or the classification CSV")
    dd.add_argument("--dataset-id", required=True)
    dd.add_argument("--out", help="output root (its research/ catalog; salt from OUT/restricted/salt)")
    dd.add_argument("--layout", default="auto", choices=["auto", "msd", "brats", "folder", "dicom-seg", "csv"])
    dd.add_argument("--labels", help='JSON label mapping: \'{"1": 1, "2": 1, "4": 2}\' or '
                                     '\'{"whole_tumor": [1, 2, 4], "tumor_core": [1, 4], "enhancing": [4]}\'')
    dd.add_argument("--strict-labels", action="store_true", help="skip cases with values the mapping leaves out")
    dd.add_argument("--voxel-size", type=float, default=1.0, help="isotropic mm; 0 keeps native spacing")
    dd.add_argument("--split", default="0.6,0.2,0.2", help="train,val,test fractions of patients")
    dd.add_argument("--folds", type=int, default=5, help="k of the per-patient k-fold; 0 = none")
    dd.add_argument("--seed", type=int, default=0)
    dd.set_defaults(fn=_cmd_ingest_downstream)

    ov = sub.add_parser("overlap", help="pretraining series (SQL returning series_id) that overlap a downstream dataset")
    ov.add_argument("query")
    ov.add_argument("--dataset-id", required=True)
    ov.add_argument("--out")
    ov.add_argument("--sql", action="store_true", help="also print the SQL that excludes overlapping patients")
    ov.set_defaults(fn=_cmd_overlap)

    for name, help_ in (("finetune-3d", "fine-tune a volume encoder + SwinUNETR/UNETR decoder on a labelled 3D dataset"),
                        ("classify-3d", "k-fold 3D classification (fine-tune or linear probe) of a labelled 3D dataset")):
        f3 = sub.add_parser(name, help=help_)
        f3.add_argument("dataset_id")
        f3.add_argument("--out")
        f3.add_argument("--model", default="brainsegfounder", help="triad-unet | triad-swin | brainsegfounder | prism")
        f3.add_argument("--weights", help="local weights; none: random init of --arch")
        f3.add_argument("--arch", help="encoder config, e.g. swin_b, swin_tiny, unet_tiny")
        f3.add_argument("--pretrained", help="a pretrain run's model_id instead of --model/--weights")
        f3.add_argument("--iterations", type=int)
        f3.add_argument("--roi", type=int)
        f3.add_argument("--lr", type=float)
        f3.add_argument("--encoder-lr", type=float)
        f3.add_argument("--seed", type=int)
        f3.add_argument("--label-fractions", help="comma list, e.g. 0.1,0.25,1")
        f3.add_argument("--preset", default="default", choices=["default", "tiny"])
        f3.add_argument("--overrides", help='JSON of other config fields, e.g. \'{"overlap": 0.25}\'')
        f3.add_argument("--eval-id")
        if name == "finetune-3d":
            f3.add_argument("--decoder", choices=["swinunetr", "unetr"])
            f3.add_argument("--freeze", action="store_true", help="train the decoder only")
        else:
            f3.add_argument("--mode", choices=["finetune", "linear"])
        f3.set_defaults(fn=_cmd_finetune3d, task=name)

    x = sub.add_parser("export-bids", help="write the anatomical volumes of a query as a BIDS dataset")
    x.add_argument("--out", help="output root of the catalog")
    x.add_argument("--query", default="SELECT series_id FROM series WHERE status = 'ok'",
                   help="SQL returning series_id")
    x.add_argument("--dest", required=True, help="a new, empty folder")
    x.add_argument("--name", default="mrifoundry export")
    x.add_argument("--validate", action="store_true", help="run bids-validator-deno (exit 1 on an error)")
    x.set_defaults(fn=_cmd_export_bids)

    q = sub.add_parser("sql", help="query the research catalog: mrifoundry sql \"SELECT …\"")
    q.add_argument("query")
    q.add_argument("--out", help="output root of the curation (default: MRIFOUNDRY_OUT or var/out)")
    q.add_argument("--format", choices=["table", "csv", "json"], default="table")
    q.add_argument("--unrestricted", action="store_true",
                   help="lift the research-zone confinement (read-only queries on OUT/research, no file "
                        "access elsewhere): power users; the query can then read and write any file, "
                        "the restricted zone included")
    q.set_defaults(fn=_cmd_sql)

    s = sub.add_parser("sample", help="generate the embedded sample archive")
    s.add_argument("--out")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--force", action="store_true", help="regenerate even if it exists")
    s.set_defaults(fn=_cmd_sample)

    pa = sub.add_parser("phi-audit", help="search every restricted-zone identifier outside it (exit 1 on a hit)")
    pa.add_argument("--out", required=True, help="output root of the curation")
    pa.add_argument("--reports", help="the report export, to also search report-text fragments")
    pa.set_defaults(fn=_cmd_phi_audit)

    d = sub.add_parser("catalog-docs", help="write docs/catalog.md from catalog/schema.py")
    d.add_argument("--path", default=str(Path(__file__).resolve().parent.parent / "docs" / "catalog.md"))
    d.add_argument("--check", action="store_true")
    d.set_defaults(fn=_cmd_catalog_docs)

    from mrifoundry.models.recipes import RECIPES
    t = sub.add_parser("pretrain", help="pretrain an encoder on catalog slices or volumes (flow pretrain)")
    t.add_argument("--out", help="output root of the curation (its research/ catalog)")
    t.add_argument("--query", help="SQL on the catalog; default per recipe (training slices, converted volumes, "
                                   "paired volumes for PRISM, brain series for BrainFound)")
    t.add_argument("--recipe", default="mri-core", choices=sorted(RECIPES), metavar="RECIPE",
                   help=" | ".join(sorted(RECIPES)))
    t.add_argument("--init-weights", help="local SAM (init=sam) or DINOv2 (init=dinov2) checkpoint")
    t.add_argument("--stage2-query", help="BrainSegFounder: the second stage's volumes (model <run>-stage2)")
    t.add_argument("--run-name")
    t.add_argument("--nproc", type=int, default=1, help="DDP processes (torchrun) — GPUs, or CPU with gloo")
    t.add_argument("--restart", action="store_true", help="ignore an existing train state of the run")
    t.add_argument("--overrides", help='JSON, e.g. \'{"epochs": 2, "batch_size": 64}\'')
    t.add_argument("--exclude-overlap", action="append", metavar="DATASET_ID",
                   help="drop the patients a downstream dataset shares with the query (repeatable)")
    t.set_defaults(fn=_cmd_pretrain)

    fe = sub.add_parser("features", help="embed catalog slices (or volumes, with a volume encoder) with a zoo "
                                         "model (flow extract-features)")
    fe.add_argument("--out")
    fe.add_argument("--query", help="SQL returning slice_id (slice models; default every training slice) or "
                                    "series_id (volume encoders; default every converted volume)")
    fe.add_argument("--model", default="mri-core", help="sam-vit-b | medsam | mri-core | dinov2-vit-b | random | "
                                                        "triad-unet | triad-swin | brainsegfounder | prism")
    fe.add_argument("--weights", help="local weights file")
    fe.add_argument("--arch", help="override the architecture preset (e.g. vit_tiny)")
    fe.add_argument("--image-size", type=int)
    fe.add_argument("--feature-set")
    fe.add_argument("--batch-size", type=int, default=32)
    fe.add_argument("--patch-grids", action="store_true")
    fe.add_argument("--pool", default="mean", choices=["mean", "cls"])
    fe.add_argument("--pretrained", help="a model_id of the catalog's models table (a pretrain run) instead of --model/--weights")
    fe.set_defaults(fn=_cmd_features)

    de = sub.add_parser("demo-eval", help="every evaluation on the demo catalog and the labelled demo tasks → a report")
    de.add_argument("--out", default="{home}/demo")
    de.set_defaults(fn=_cmd_demo_eval)

    a = p.parse_args(argv)
    return run_verb(a)


if __name__ == "__main__":
    raise SystemExit(main())
