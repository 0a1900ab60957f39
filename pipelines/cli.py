"""The `nst` command line: thin wrappers over pipelines.run, .experiment and .report.

User mistakes (UserError) become one line on stderr and exit status 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UserError

DEFAULT_EXPERIMENT = "nst"


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key (value parsed as YAML), e.g. --set optimizer.lr=0.1; repeatable",
    )
    parser.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (for CI and logs)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nst", description="Neural style transfer experiments, tracked in MLflow.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="one style transfer, tracked as an MLflow run")
    run.add_argument("--content", help="content photo (any image Pillow reads)")
    run.add_argument("--style", help="style painting")
    run.add_argument("--config", type=Path, help="YAML file of run keys (the same keys as --set)")
    run.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment name (default: nst)")
    _add_common(run)

    exp = sub.add_parser("experiment", help="run a YAML grid of runs under one parent run (resumes)")
    exp.add_argument("config", help="experiment file: a path, or a name in experiments/ (lr_sweep.yaml)")
    exp.add_argument("--dry-run", action="store_true", help="print the expanded runs and exit")
    _add_common(exp)

    rep = sub.add_parser("report", help="figures, measurements and claim verdicts of a sweep, from MLflow")
    rep.add_argument("experiment", help="experiment name (the `name:` of its YAML), e.g. lr_sweep")
    rep.add_argument("--parent", help="the sweep's parent run id (default: the latest sweep)")
    rep.add_argument("--out", type=Path, help="output folder (default: reports/<experiment>/)")
    rep.add_argument("--dpi", type=int, default=110, help="figure resolution (default 110; 60 for docs)")
    rep.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)")
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from pipelines.config import merge, outside, parse_set, read_yaml, resolve_paths, run_config
    from pipelines.run import FINISHED, execute
    from pipelines.tracking import resolve_tracking_uri

    data: dict[str, Any] = {}
    if args.config:
        loaded = read_yaml(args.config)
        if not isinstance(loaded, dict):
            raise UserError(f"{args.config}: expected a mapping of run keys, e.g. 'size: 256'")
        data = resolve_paths(loaded, (args.config.resolve().parent, Path.cwd()))
    cli = {k: v for k, v in (("content", args.content), ("style", args.style)) if v}
    overrides = dict(parse_set(s) for s in args.overrides)
    data = merge(data, resolve_paths({**cli, **overrides}, (Path.cwd(),)))
    config = run_config(data, source=str(args.config) if args.config else "command line")
    for note in outside(config, Path.cwd(), overrides):
        print(note, file=sys.stderr)
    uri = resolve_tracking_uri(args.tracking_uri)
    result = execute(config, tracking_uri=uri, experiment=args.experiment, progress=not args.quiet)
    print(f"run {result.run_id}: {result.status} in {result.seconds:.1f} s")
    if result.status != FINISHED:
        print(f"error: {result.error}", file=sys.stderr)
        return EXIT_FAILED
    for key in ("loss/total", "loss/content", "loss/style"):
        if key in result.losses:
            print(f"  {key} = {result.losses[key]:.4g}")
    print(f"final image: {result.final_image}")
    print(f"open the UI: make ui  (then http://127.0.0.1:5000), store {uri}")
    return EXIT_OK


def _cmd_experiment(args: argparse.Namespace) -> int:
    from pipelines.config import outside, parse_set
    from pipelines.experiment import run_experiment, summary
    from pipelines.grid import find_config, load_experiment
    from pipelines.tracking import resolve_tracking_uri

    path = find_config(args.config)
    overrides = dict(parse_set(s) for s in args.overrides)
    experiment = load_experiment(path, overrides)
    for note in sorted({n for p in experiment.points for n in outside(p.config, Path.cwd(), overrides)}):
        print(note, file=sys.stderr)
    if args.dry_run:
        print(f"{experiment.name}: {len(experiment.points)} runs from {path}")
        for point in experiment.points:
            c = point.config
            print(f"  [{point.index + 1}] {point.name:<30} key {point.key}  {c.size} px, {c.iterations} it")
        return EXIT_OK
    uri = resolve_tracking_uri(args.tracking_uri)
    sweep = run_experiment(experiment, tracking_uri=uri, progress=not args.quiet)
    print()
    print(summary(sweep))
    finals = [(p.name, r.final_image) for p, r in sweep.results if r.final_image]
    if finals:
        print("final images:")
        for name, path in finals:
            print(f"  {name:<28} {path}")
    for point, result in sweep.failed:
        print(f"FAILED {point.name}: {result.error}", file=sys.stderr)
    print(f"parent run {sweep.parent_run_id}; compare the runs in the UI: make ui  (store {uri})")
    return EXIT_FAILED if sweep.failed else EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from mlflow import MlflowClient

    from pipelines.report import build_report
    from pipelines.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    path = build_report(MlflowClient(uri), args.experiment, args.out, args.parent, uri, args.dpi)
    print(f"report: {path}")
    return EXIT_OK


COMMANDS = {"run": _cmd_run, "experiment": _cmd_experiment, "report": _cmd_report}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # MLflow's per-file download bars and its "Creating initial MLflow database tables" notes
    # would bury the one line a user needs to read.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # in case it already was
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"nst: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("nst: interrupted; the run is marked KILLED and its metrics are saved", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
