"""The `nst` command line's grammar: its commands, their arguments and help (pipelines.cli runs them)."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_EXPERIMENT = "nst"


def _tracking_uri(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key (value parsed as YAML), e.g. --set optimizer.lr=0.1; repeatable",
    )
    _tracking_uri(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars (for CI and logs)")


def parser() -> argparse.ArgumentParser:
    nst = argparse.ArgumentParser(prog="nst", description="Neural style transfer experiments, tracked in MLflow.")
    sub = nst.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="one style transfer, tracked as an MLflow run")
    run.add_argument("--content", help="content photo (any image Pillow reads)")
    run.add_argument("--style", action="append", help="style painting; repeat to blend several (style_blend)")
    run.add_argument("--config", type=Path, help="YAML file of run keys (the same keys as --set)")
    run.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment name (default: nst)")
    run.add_argument("--preset", help="the recipe to start from: default (the measured one, the default) or seed "
                     "(the slides' formulation); any --set key overrides it")
    run.add_argument("--out", type=Path, help="also save the final image to this file, in the format its name "
                     "says (.png, .jpg, .webp, .tif); the run keeps its final.png in the store")
    _add_common(run)

    exp = sub.add_parser("experiment", help="run a YAML grid of runs under one parent run (resumes)")
    exp.add_argument("config", help="experiment file: a path, or a name in experiments/ (lr_sweep.yaml)")
    exp.add_argument("--dry-run", action="store_true", help="print the expanded runs and exit")
    exp.add_argument("--yes", action="store_true", help="run a sweep of more runs than max_runs (1000 unless "
                     "the file says) without asking")
    exp.add_argument("--executor", choices=("local", "ray"), default="local",
                     help="run the points here one by one (local) or as Ray tasks on a cluster (ray)")
    exp.add_argument("--ray-address", help="Ray cluster: HOST:PORT or auto (default: $RAY_ADDRESS, "
                     "else a Ray instance on this machine)")
    exp.add_argument("--resources", help="Ray resources per batch, JSON, e.g. '{\"num_gpus\": 1}' "
                     "(default: 1 CPU)")
    exp.add_argument("--batch", default="auto", help="runs optimized together as one image tensor: auto "
                     "(default: by device and memory) or at most N; 1 runs them one at a time")
    exp.add_argument("--fresh", action="store_true", help="run every point anew under a new parent run, "
                     "skipping and copying none (after a change to nst itself, say); the earlier sweeps keep "
                     "their runs, and the next run of the command resumes this one")
    _add_common(exp)

    rep = sub.add_parser("report", help="figures, measurements and claim verdicts of a sweep, from MLflow")
    rep.add_argument("experiment", help="experiment name (the `name:` of its YAML), e.g. lr_sweep")
    rep.add_argument("--parent", help="the sweep's parent run id (default: the latest sweep)")
    rep.add_argument("--out", type=Path, help="output folder (default: reports/<experiment>/)")
    rep.add_argument("--dpi", type=int, default=110, help="figure resolution (default 110; 60 for docs)")
    _tracking_uri(rep)
    sht = sub.add_parser("sheet", help="a sweep's final images as a matrix with times and quality metrics")
    sht.add_argument("experiment", help="experiment name (the `name:` of its YAML), e.g. gallery")
    sht.add_argument("--rows", help="varied keys for the rows, comma-separated (default: content if it varies; "
                     "every run gets a cell of its own)")
    sht.add_argument("--cols", help="varied keys for the columns (default: style if it varies, and the other "
                     "varied keys)")
    sht.add_argument("--out", type=Path, help="output folder (default: reports/<experiment>/)")
    sht.add_argument("--images", action="store_true", help="also write each final image as JPEG")
    sht.add_argument("--parent", help="the sweep's parent run id (default: the latest sweep)")
    sht.add_argument("--dpi", type=int, default=80, help="sheet resolution (default 80)")
    _tracking_uri(sht)
    lrf = sub.add_parser("lr-find", help="short low-resolution probes over a log range of lr; recommends one")
    lrf.add_argument("--content", required=True, help="content photo")
    lrf.add_argument("--style", action="append", required=True, help="style painting (repeat to blend)")
    lrf.add_argument("--size", type=int, default=64, help="probe size, long side in px (default 64)")
    lrf.add_argument("--iterations", type=int, default=60, help="steps per probe (default 60)")
    lrf.add_argument("--lr-min", type=float, default=0.01, help="lowest lr (default 0.01)")
    lrf.add_argument("--lr-max", type=float, default=100.0, help="highest lr (default 100)")
    lrf.add_argument("--points", type=int, default=13, help="lrs in the range, log-spaced (default 13)")
    lrf.add_argument("--experiment", default="lr_find", help="MLflow experiment of the probes (default lr_find)")
    lrf.add_argument("--out", type=Path, default=Path("reports/lr_find"), help="where the plot goes")
    _add_common(lrf)

    ui = sub.add_parser("ui", help="the MLflow UI on a local store (127.0.0.1), with the link to the latest sweep")
    ui.add_argument("--port", type=int, default=5000, help="HTTP port (default 5000)")
    _tracking_uri(ui)

    srv = sub.add_parser("server", help="MLflow tracking server for many writers (PostgreSQL in .pg/, or SQLite)")
    srv.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql",
                     help="backend store: PostgreSQL started from .pg/ (default) or a SQLite file")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for a cluster)")
    srv.add_argument("--port", type=int, default=5000, help="HTTP port (default 5000)")
    srv.add_argument("--pg-port", type=int, default=5433, help="PostgreSQL's port on 127.0.0.1 (default 5433)")
    srv.add_argument("--data", type=Path, default=Path("mlruns/server"),
                     help="SQLite file's and artifacts' folder (default mlruns/server)")
    srv.add_argument("--pg-dir", type=Path, default=Path(".pg"), help="PostgreSQL's folder (default .pg)")
    srv.add_argument("--allowed-hosts", help="Host headers MLflow accepts when bound beyond loopback "
                     "(e.g. 'head-node:5000,10.0.0.5:5000')")
    srv.add_argument("--auth", action="store_true",
                     help="sign-in required (always on when --host is not loopback); users: nst server add-user")
    srv.add_argument("--serve-network-without-auth", action="store_true",
                     help="bind beyond loopback with no sign-in: anyone who reaches the port can read, change and "
                     "delete every run")
    actions = srv.add_subparsers(dest="action")
    user = actions.add_parser("add-user", help="a user of an authenticated server (prints the password)")
    user.add_argument("name", help="the user's name (MLFLOW_TRACKING_USERNAME)")
    user.add_argument("--read-only", action="store_true", help="may read and compare runs, not create or change them")
    user.add_argument("--password-stdin", action="store_true", help="take the password from standard input")
    user.add_argument("--url", help="the server (default http://127.0.0.1:PORT)")
    user.add_argument("--data", type=Path, default=Path("mlruns/server"),
                      help="the server's folder, where auth/admin_password lies (default mlruns/server)")
    return nst
