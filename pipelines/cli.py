"""The `nst` command line: thin wrappers over pipelines.execution (run, sweep) and pipelines.reports.

User mistakes (UserError) become one line on stderr and exit status 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.cli_parser import parser
from pipelines.errors import EXIT_BROKEN_PIPE, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UserError

if TYPE_CHECKING:  # the CLI imports torch, mlflow and ray only for the command that needs them
    from pipelines.config.runs import RunConfig
    from pipelines.execution.executors import Executor


def _cmd_run(args: argparse.Namespace) -> int:
    # The config and its paths are checked before torch, Lightning and MLflow load (5-6 s here): bad input
    # gets its line at once.
    from pipelines.config.one_run import command_line_config
    from pipelines.config.paths import input_files

    config = command_line_config(args.content, args.style, args.config, args.overrides, args.preset)
    if args.out is not None:
        from pipelines.reports.export import check_out

        args.out = check_out(args.out, (path for _, path in input_files(config)))
    from mlflow import MlflowClient

    from pipelines.execution.run import FINISHED, execute
    from pipelines.tracking.run_log import STOP_TAG
    from pipelines.tracking.store import resolve_tracking_uri
    from pipelines.tracking.ui import ui_base

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
    client = MlflowClient(uri)
    if args.out is not None:
        from pipelines.reports.export import save_final

        print(f"saved as: {save_final(client, result.run_id, args.out)}")
    run = client.get_run(result.run_id)
    if STOP_TAG in run.data.tags:  # "ran all 300 steps", or where `stop` ended it and why
        print(f"stopped: {run.data.tags[STOP_TAG]}")
    experiment_id = run.info.experiment_id
    print(f"see the run: {ui_base(uri)}/#/experiments/{experiment_id}/runs/{result.run_id}{_start_ui(uri)}")
    return EXIT_OK


def _start_ui(uri: str) -> str:
    """How to open a link of a local store's UI (a tracking server serves its own)."""
    from pipelines.tracking.ui import ui_hint

    hint = ui_hint(uri)
    return f"  (start the UI first: {hint})" if hint else ""


def _cmd_experiment(args: argparse.Namespace) -> int:
    # As _cmd_run: the file, its points and their paths are checked before the heavy imports.
    from pipelines.config.grid import find_config, load_experiment
    from pipelines.config.paths import check_paths, outside
    from pipelines.config.yaml_files import parse_set

    path = find_config(args.config)
    overrides = dict(parse_set(s) for s in args.overrides)
    experiment = load_experiment(path, overrides)
    for note in sorted({n for p in experiment.points for n in outside(p.config, Path.cwd(), overrides)}):
        print(note, file=sys.stderr)
    check_paths(p.config for p in experiment.points)
    from mlflow import MlflowClient

    from pipelines.execution.batches import parse_batch, plan
    from pipelines.execution.sweep import run_experiment, summary
    from pipelines.tracking.store import resolve_tracking_uri
    from pipelines.tracking.ui import sweep_link

    batch = parse_batch(args.batch)
    executor, batch_cap = _executor(args)
    if args.dry_run:
        print(f"{experiment.name}: {len(experiment.points)} runs from {path}")
        for point in experiment.points:
            c = point.config
            scales = f" at each of {', '.join(map(str, c.sizes))} px" if len(c.sizes) > 1 else ""
            print(f"  [{point.index + 1}] {point.name:<30} key {point.key}  {c.size} px, {c.iterations} it{scales}")
        batches = plan(experiment.points, lambda p: p.config, lambda p: 0, batch, batch_cap)
        sizes = sorted({len(b) for b in batches})
        print(f"in {len(batches)} batch{'es' if len(batches) > 1 else ''} of {sizes[-1]} runs or fewer "
              f"(--batch {args.batch}; sizes {', '.join(map(str, sizes))})")
        return EXIT_OK
    n = len(experiment.points)
    if n > experiment.max_runs and not args.yes:
        raise UserError(f"{path}: {n} runs, more than max_runs: {experiment.max_runs}; check with --dry-run, "
                        "then run them with --yes (or raise max_runs in the file)")
    uri = resolve_tracking_uri(args.tracking_uri)
    sweep = run_experiment(experiment, tracking_uri=uri, progress=not args.quiet, executor=executor, batch=batch,
                           batch_cap=batch_cap, fresh=args.fresh)
    print()
    print(summary(sweep))
    finals = [(p.name, r.final_image) for p, r in sweep.results if r.final_image]
    if finals:
        print("final images:")
        width = max(len(name) for name, _ in finals)
        for name, image in finals:
            print(f"  {name:<{width}}  {image}")
    for point, result in sweep.failed:
        print(f"FAILED {point.name}: {result.error}", file=sys.stderr)
    client = MlflowClient(uri)
    experiment_id = client.get_run(sweep.parent_run_id).info.experiment_id
    print(f"parent run {sweep.parent_run_id} (store {uri}); compare the runs:")
    print(f"  {sweep_link(client, uri, experiment_id, sweep.parent_run_id)}{_start_ui(uri)}")
    return EXIT_FAILED if sweep.failed else EXIT_OK


def _executor(args: argparse.Namespace) -> tuple[Executor, Callable[[RunConfig], int]]:
    """Who runs the batches, and what `--batch auto` fits in one where they run."""
    from pipelines.execution.batches import here
    from pipelines.execution.executors import run_local

    if args.executor == "local":
        if args.ray_address or args.resources:
            raise UserError("--ray-address and --resources need --executor ray")
        return run_local, here
    if importlib.util.find_spec("ray") is None:  # imported only where the batches start: after the sweep's parent run
        raise UserError("--executor ray needs Ray, which is not installed here: make install-dev adds it "
                        "(or .venv/bin/pip install -e '.[ray]')")
    from pipelines.execution.ray_executor import batch_cap, parse_resources, ray_executor

    resources = parse_resources(args.resources)
    return ray_executor(args.ray_address, resources), batch_cap(resources)


def _cmd_report(args: argparse.Namespace) -> int:
    from mlflow import MlflowClient

    from pipelines.reports.report import build_report
    from pipelines.tracking.store import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri, reading=True)
    path = build_report(MlflowClient(uri), args.experiment, args.out, args.parent, uri, args.dpi)
    print(f"report: {path}")
    return EXIT_OK


def _cmd_sheet(args: argparse.Namespace) -> int:
    from mlflow import MlflowClient

    from pipelines.reports.readback import load_sweep
    from pipelines.reports.sheet import cells, write_sheet
    from pipelines.tracking.store import resolve_tracking_uri

    sweep = load_sweep(MlflowClient(resolve_tracking_uri(args.tracking_uri, reading=True)), args.experiment,
                       args.parent)
    found = cells(sweep, args.rows.split(",") if args.rows else None, args.cols.split(",") if args.cols else None)
    path = write_sheet(found, args.out or Path("reports") / args.experiment, sweep.experiment, args.images, args.dpi,
                       sweep.left_out())
    print(f"sheet: {path}")
    return EXIT_OK


def _cmd_lr_find(args: argparse.Namespace) -> int:
    if not 0 < args.lr_min < args.lr_max:  # answered before the heavy imports below
        raise UserError(f"--lr-min {args.lr_min:g} and --lr-max {args.lr_max:g}: need 0 < lr-min < lr-max")
    if args.points < 2:
        raise UserError(f"--points {args.points}: need at least 2 learning rates to compare")
    from mlflow import MlflowClient

    from pipelines.config.paths import resolve_paths
    from pipelines.config.yaml_files import merge, parse_set
    from pipelines.lr_find import ascii_plot, find_lr, log_range, plot, run_command
    from pipelines.tracking.store import resolve_tracking_uri
    from pipelines.tracking.ui import nst_program

    style = args.style[0] if len(args.style) == 1 else args.style
    # find_lr probes Adam's lr on the seed's formulation; --set preset=default probes on the default's
    # keys instead, with --set optimizer.name=adam.
    base = {"content": args.content, "style": style, "size": args.size,
            "iterations": args.iterations, "snapshots": [0], "checkpoint_every": 0}
    overrides = dict(parse_set(s) for s in args.overrides)
    base = merge(resolve_paths(base, (Path.cwd(),)), resolve_paths(overrides, (Path.cwd(),)))
    lrs = log_range(args.lr_min, args.lr_max, args.points)
    uri = resolve_tracking_uri(args.tracking_uri)
    say = (lambda _: None) if args.quiet else print
    probes, best, why, parent = find_lr(base, lrs, tracking_uri=uri, name=args.experiment, say=say)
    print(ascii_plot(probes, best))
    args.out.mkdir(parents=True, exist_ok=True)
    figure = plot(probes, best, args.out / "lr_find.png")
    MlflowClient(uri).log_artifact(parent, str(figure))
    print(f"recommended lr: {best.lr:g} ({why})")
    print(f"use it: {nst_program()} {run_command(args.content, args.style, overrides, best.lr)}")
    print(f"plot: {figure}; probes: parent run {parent} in experiment {args.experiment}")
    return EXIT_OK


def _cmd_server(args: argparse.Namespace) -> int:
    from pipelines.tracking.server import Serving, serve

    if args.action == "add-user":
        from pipelines.tracking.auth import AuthFolder, add_user, read_password

        url = args.url or f"http://127.0.0.1:{args.port}"
        password = read_password(args.password_stdin)
        add_user(url, AuthFolder(args.data / "auth"), args.name, password, args.read_only)
        rights = "read-only" if args.read_only else "may create and change runs"
        print(f"user {args.name} added to {url} ({rights})")
        if not args.password_stdin:
            print(f"password: {password}   (shown once; give it to {args.name})")
        print(f"they sign in with:  export MLFLOW_TRACKING_USERNAME={args.name} MLFLOW_TRACKING_PASSWORD=…")
        return EXIT_OK
    return serve(Serving(db=args.db, host=args.host, port=args.port, data=args.data, pg_dir=args.pg_dir,
                         pg_port=args.pg_port, allowed_hosts=args.allowed_hosts, auth=args.auth,
                         without_auth=args.serve_network_without_auth))


def _cmd_ui(args: argparse.Namespace) -> int:
    from mlflow import MlflowClient

    from pipelines.tracking.server import check_port, server_environment
    from pipelines.tracking.store import resolve_tracking_uri
    from pipelines.tracking.ui import mlflow_ui_command, opening_note

    check_port("127.0.0.1", args.port, "nst ui", "--port (make ui PORT=5001)")
    uri = resolve_tracking_uri(args.tracking_uri)
    print(f"MLflow UI: http://127.0.0.1:{args.port}  (store {uri}; Ctrl-C stops it)")
    print(opening_note(MlflowClient(uri), uri, args.port))
    command = mlflow_ui_command(uri, args.port)
    sys.stdout.flush()  # exec keeps no Python buffer
    # Replaced by `mlflow ui` itself: Ctrl-C and kill reach the server, and nothing is left behind.
    os.execve(command[0], command, server_environment())
    return EXIT_OK  # not reached


COMMANDS = {"run": _cmd_run, "experiment": _cmd_experiment, "report": _cmd_report, "lr-find": _cmd_lr_find,
            "server": _cmd_server, "ui": _cmd_ui, "sheet": _cmd_sheet}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
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
    except BrokenPipeError:
        # Whoever read the output left (`nst experiment big.yaml --dry-run | head`): stop as a Unix tool
        # does on SIGPIPE, without a traceback; stdout goes nowhere, or Python's flush at exit raises again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as exc:
        from pipelines.tracking.space import free_in, no_space, written

        if not no_space(exc):
            raise
        # Outside a store's writes (pipelines.tracking.space tells those): a report's figures, say.
        file = written(exc) or getattr(args, "out", None)
        where = f" ({free_in(Path(file))})" if file else ""
        print(f"nst: error: no space left on the device{where}: free some space there, then run the same "
              "command again", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
