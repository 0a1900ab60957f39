"""The newcomer's path: shipped experiments from any folder, no silent wrong runs (seeds in a grid,
duplicate points, numbers that are not finite), a clear line for any store nst cannot use, big grids
checked fast and confirmed before they start, and every point's inputs checked before anything is
written."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines.cli import main
from pipelines.config.grid import load_experiment
from pipelines.tracking.ui import PROJECT_STORE, opening_note, ui_hint

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "experiments" / "images"
CONTENT, STYLE = IMAGES / "grace_hopper.jpg", IMAGES / "starry_night.jpg"


def _one_line_exit_2(capsys, argv: list[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("nst: error: "), err
    for needle in needles:
        assert needle in err, err
    return err


def _file(tmp_path: Path, body: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(f"name: exp\nbase: {{content: {CONTENT}, style: {STYLE}, size: 32, iterations: 2, "
                    f"snapshots: [0]}}\n{body}")
    return path


# -- from any folder ---------------------------------------------------------------------------------
def test_a_shipped_experiment_runs_from_another_folder(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # not the project's root
    store = f"sqlite:///{tmp_path}/store/mlflow.db"
    code = main(["experiment", str(ROOT / "experiments" / "lr_sweep.yaml"), "--tracking-uri", store, "--quiet",
                 "--set", "size=32", "--set", "iterations=2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("lr_sweep").experiment_id])
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    # The link's hint starts a UI on this store: `make ui` would serve the checkout's mlruns/ instead.
    assert f"(start the UI first: {sys.executable} -m pipelines.cli ui --tracking-uri {store})" in out, out


def test_the_ui_hint_names_a_command_that_serves_the_runs_store(monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert PROJECT_STORE == f"sqlite:///{ROOT / 'mlruns' / 'mlflow.db'}"
    assert ui_hint(PROJECT_STORE) == "make ui"  # what `make experiment` writes into, and `make ui` serves
    assert ui_hint("http://127.0.0.1:5000") == ""  # a tracking server serves its own UI
    elsewhere = "sqlite:////tmp/my runs/mlflow.db"
    monkeypatch.setattr(sys, "argv", ["/opt/venv/bin/nst", "run"])  # called by its path, not on PATH
    assert ui_hint(elsewhere) == "/opt/venv/bin/nst ui --tracking-uri 'sqlite:////tmp/my runs/mlflow.db'"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)  # `make ui` would serve this store, not the checkout's
    assert ui_hint(PROJECT_STORE).endswith(f"nst ui --tracking-uri {PROJECT_STORE}")


def test_the_ui_on_a_store_without_sweeps_says_what_it_holds(store) -> None:
    """`nst ui` in a folder where nothing ran serves an empty store: it says so, and where the runs may be."""
    client = MlflowClient(store)
    empty = opening_note(client, store)
    assert "holds no runs yet" in empty and "another folder" in empty and "--tracking-uri" in empty
    client.create_run(client.create_experiment("nst"))  # a single run, as `nst run` logs one
    assert "only single runs" in opening_note(client, store)


def test_output_cut_short_by_its_reader_ends_without_a_traceback(tmp_path) -> None:
    # 2,500 points' dry-run lines (~200 kB) overflow the pipe once its reader has gone (`| head -1`).
    path = _file(tmp_path, "grid:\n  optimizer.lr: [" + ", ".join(f"{0.01 * (i + 1):g}" for i in range(50))
                 + "]\n  beta: [" + ", ".join(str(i + 1) for i in range(50)) + "]\n")
    process = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "experiment", str(path), "--dry-run"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline().startswith(b"exp: 2500 runs from")
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141 and err == "", err  # 128 + SIGPIPE, as a shell reports it


@pytest.mark.parametrize(("command", "flag"), [(["ui"], "--port"), (["server", "--db", "sqlite"], "--port"),
                                              (["server", "--port", "0"], "--pg-port")],
                         ids=["ui", "server", "server's PostgreSQL"])
def test_a_taken_port_is_one_line_before_anything_starts(tmp_path, monkeypatch, capsys, command, flag) -> None:
    # mlflow itself printed the address, then died on "address already in use" under its log lines,
    # leaving the printed link to whatever held the port; pg_ctl said "failed" and left why to its log.
    import socket

    monkeypatch.chdir(tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        extra = ["--tracking-uri", f"sqlite:///{tmp_path}/mlruns/mlflow.db"] if command == ["ui"] else []
        _one_line_exit_2(capsys, [*command, flag, str(port), *extra], f"port {port} on 127.0.0.1 is taken",
                         f"pick another with {flag}")
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / ".pg").exists()  # nothing made


def test_every_shipped_experiment_names_its_images_relative_to_itself() -> None:
    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        text = path.read_text()
        assert "experiments/images/" not in text, f"{path.name}: image paths are relative to the file's folder"
        assert "relative to this file" in text, f"{path.name}: says how its paths resolve"


def test_a_sweep_checks_every_points_inputs_before_it_writes_anything(tmp_path, store, capsys) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image")
    path = _file(tmp_path, f"grid: {{style: [{STYLE}, {bad}]}}\n")
    _one_line_exit_2(capsys, ["experiment", str(path), "--tracking-uri", store, "--quiet"], str(bad), "not an image")
    client = MlflowClient(store)
    assert all(not client.search_runs([e.experiment_id]) for e in client.search_experiments())


# -- no silent wrong runs -----------------------------------------------------------------------------
@pytest.mark.parametrize(("setting", "needle"), [
    ("optimizer.lr=0.5", "--set optimizer.lr: the file's grid varies it (0.1,1)"),
    ("optimizer={lr: 0.5}", "--set optimizer.lr: the file's grid varies it"),  # the nested form too
    ("seed=3", "--set seed: the file's seeds (0; [0] unless given) set it"),
])
def test_a_set_that_the_grid_would_replace_is_refused(tmp_path, store, capsys, setting, needle) -> None:
    # It was silently ignored: `--set optimizer.lr=0.5` on lr_sweep.yaml ran its three learning rates.
    path = _file(tmp_path, "grid:\n  optimizer.lr: [0.1, 1]\n")
    _one_line_exit_2(capsys, ["experiment", str(path), "--set", setting, "--tracking-uri", store], needle,
                     "so --set would change no run")
    assert main(["experiment", str(path), "--set", "size=48", "--dry-run"]) == 0  # a key it does not vary
    assert "48 px" in capsys.readouterr().out


def test_a_run_file_and_an_experiment_file_swapped_say_which_command_runs_each(tmp_path, store, capsys) -> None:
    run_file = tmp_path / "one_run.yaml"
    run_file.write_text(f"content: {CONTENT}\nstyle: {STYLE}\nsize: 32\n")
    _one_line_exit_2(capsys, ["experiment", str(run_file), "--tracking-uri", store],
                     "holds one run's keys, not an experiment", f"nst run --config {run_file}")
    sweep = _file(tmp_path, "grid: {optimizer.lr: [0.1, 1.0]}\n")
    _one_line_exit_2(capsys, ["run", "--config", str(sweep), "--tracking-uri", store],
                     "is an experiment file (base, grid)", f"nst experiment {sweep}")


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path, store, capsys) -> None:
    # PyYAML keeps the last silently: a grid with optimizer.lr twice (a copy left behind) ran the second only.
    path = _file(tmp_path, "grid:\n  optimizer.lr: [0.1, 1]\n  optimizer.lr: [5, 6]\n")
    _one_line_exit_2(capsys, ["experiment", str(path), "--dry-run"], "line 5:",
                     "key 'optimizer.lr' given twice (lines 4 and 5); keep one")
    run = tmp_path / "run.yaml"
    run.write_text(f"content: {CONTENT}\nstyle: {STYLE}\nsize: 32\nsize: 64\n")
    _one_line_exit_2(capsys, ["run", "--config", str(run), "--tracking-uri", store], "key 'size' given twice")
    # YAML's merge key still merges keys that the mapping then overrides: not a key given twice.
    merged = tmp_path / "merged.yaml"
    merged.write_text(f"name: m\nbase: &base {{content: {CONTENT}, style: {STYLE}, size: 32, iterations: 2}}\n"
                      "variants:\n  a: {<<: *base, size: 40}\n  b: {size: 64}\n")
    assert [p.config.size for p in load_experiment(merged).points] == [40, 64]


def test_seed_in_a_grid_is_a_grid_axis(tmp_path) -> None:
    experiment = load_experiment(_file(tmp_path, "grid: {optimizer.lr: [0.1, 1], seed: [1, 2]}\n"))
    assert sorted((p.config.optimizer.lr, p.config.seed) for p in experiment.points) == [
        (0.1, 1), (0.1, 2), (1.0, 1), (1.0, 2)]
    assert len({p.key for p in experiment.points}) == 4
    assert sorted(p.name for p in experiment.points) == ["lr=0.1 seed=1", "lr=0.1 seed=2", "lr=1 seed=1",
                                                        "lr=1 seed=2"]


def test_seed_in_a_grid_and_seeds_at_once_is_refused(tmp_path, store, capsys) -> None:
    path = _file(tmp_path, "grid: {seed: [1, 2]}\nseeds: [3, 4]\n")
    _one_line_exit_2(capsys, ["experiment", str(path), "--tracking-uri", store], "seed", "seeds")


@pytest.mark.parametrize("body", ["grid: {optimizer.lr: [0.1, 0.1]}\n",
                                  "grid: {optimizer.lr: [0.1, 1]}\nvariants: {a: {}, b: {}}\n",
                                  "grid: {checkpoint_every: [10, 20]}\n"])
def test_two_points_with_one_run_key_are_refused(tmp_path, store, capsys, body) -> None:
    path = _file(tmp_path, body)
    _one_line_exit_2(capsys, ["experiment", str(path), "--tracking-uri", store], "the same run")


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e999"])
def test_numbers_must_be_finite(store, capsys, value) -> None:
    _one_line_exit_2(capsys, ["run", "--content", str(CONTENT), "--style", str(STYLE), "--set",
                              f"optimizer.lr={value}", "--tracking-uri", store], "optimizer.lr", "finite")


def test_a_grid_value_must_be_finite(tmp_path, store, capsys) -> None:
    path = _file(tmp_path, "grid: {beta: [1, .inf]}\n")
    _one_line_exit_2(capsys, ["experiment", str(path), "--tracking-uri", store], "beta", "finite")


# -- stores nst cannot use ------------------------------------------------------------------------------
@pytest.mark.parametrize(("uri", "needles"), [
    ("file:/tmp/some/folder", ("file store", "sqlite:///")),
    ("/tmp/some/folder", ("file store", "sqlite:///")),
    ("ftp://example.org/mlruns", ("ftp", "sqlite:///", "http://")),
    ("mssql://user@127.0.0.1:1/db", ("mssql", "driver")),
    pytest.param("postgresql://nobody@127.0.0.1:9/none", ("postgresql://nobody@127.0.0.1:9/none", "cannot"),
                 marks=pytest.mark.skipif(importlib.util.find_spec("psycopg2") is None,
                                          reason="psycopg2 (the '.[server]' extra, make test installs it) is not "
                                                 "installed: nst answers that instead of trying the server")),
])
def test_a_store_nst_cannot_use_is_one_line(capsys, uri, needles) -> None:
    start = time.monotonic()
    _one_line_exit_2(capsys, ["run", "--content", str(CONTENT), "--style", str(STYLE), "--tracking-uri", uri],
                     *needles)
    assert time.monotonic() - start < 15


@pytest.mark.parametrize("damage", ["a photo", "cut short"])
def test_a_file_that_is_not_an_sqlite_database_is_one_line(tmp_path, store, capsys, damage) -> None:
    """`--tracking-uri sqlite:///` of another file, or of a store copied in part: a traceback before."""
    path = tmp_path / "mlflow.db"
    if damage == "a photo":
        path.write_bytes(CONTENT.read_bytes())
    else:
        MlflowClient(store).search_experiments()  # a real store, of which only the first page is copied
        path.write_bytes(Path(store.removeprefix("sqlite:///")).read_bytes()[:4096])
    for command in (["run", "--content", str(CONTENT), "--style", str(STYLE)], ["report", "lr_sweep"]):
        _one_line_exit_2(capsys, [*command, "--tracking-uri", f"sqlite:///{path}"],
                         f"{path} is not an MLflow store: the file is not an SQLite database, or is damaged")
    assert path.stat().st_size in (CONTENT.stat().st_size, 4096)  # left as it was


def test_executor_ray_without_ray_installed_is_one_line_before_anything_is_written(tmp_path, unmade_store, capsys,
                                                                                   monkeypatch) -> None:
    """`make experiment` installs no Ray (`make install-dev` does): the sweep's parent run was created,
    then `import ray` failed in a traceback, leaving it FAILED."""
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: import ray fails, find_spec says None
    path = _file(tmp_path, "grid: {optimizer.lr: [0.1, 1]}\n")
    _one_line_exit_2(capsys, ["experiment", str(path), "--executor", "ray", "--tracking-uri", unmade_store],
                     "--executor ray needs Ray, which is not installed here: make install-dev adds it")
    assert not Path(unmade_store.removeprefix("sqlite:///")).exists()


def test_a_moved_or_copied_store_reads_and_writes_its_own_files(tmp_path, capsys) -> None:
    """MLflow records a SQLite store's artifact paths whole: moved, its report was a traceback; copied, its
    new runs wrote their files into the original's folder."""
    first = tmp_path / "first"
    first.mkdir()
    path = _file(first, "grid: {optimizer.lr: [0.1, 1]}\n")
    assert main(["experiment", str(path), "--tracking-uri", f"sqlite:///{first}/mlruns/mlflow.db", "--quiet"]) == 0
    moved = tmp_path / "moved here"
    shutil.move(first, moved)
    store = f"sqlite:///{moved}/mlruns/mlflow.db"
    assert main(["report", "exp", "--tracking-uri", store, "--out", str(tmp_path / "report"), "--dpi", "30"]) == 0
    err = capsys.readouterr().err
    assert f"note: this store was moved or copied: the files of its experiment 'exp' were recorded under {first}" in err
    assert main(["report", "exp", "--tracking-uri", store, "--out", str(tmp_path / "report"), "--dpi", "30"]) == 0
    assert "note:" not in capsys.readouterr().err  # once

    copied = tmp_path / "copied"
    shutil.copytree(moved, copied)
    grid = copied / "exp.yaml"
    grid.write_text(grid.read_text().replace("[0.1, 1]", "[0.1, 1, 2]"))
    assert main(["experiment", str(grid), "--tracking-uri", f"sqlite:///{copied}/mlruns/mlflow.db", "--quiet"]) == 0
    runs = {p.name for p in (copied / "mlruns" / "artifacts" / "exp").iterdir()}
    assert len(runs) == 3 + 4  # the first sweep's parent and 2 runs; the new parent, 2 copies and 1 new run
    assert len(list((moved / "mlruns" / "artifacts" / "exp").iterdir())) == 3  # the original, untouched


# -- big grids --------------------------------------------------------------------------------------------
def test_a_hundred_thousand_point_grid_expands_into_distinct_valid_runs(tmp_path) -> None:
    lrs = [round(0.001 * (i + 1), 6) for i in range(400)]
    betas = [round(0.1 * (i + 1), 6) for i in range(250)]
    path = _file(tmp_path, f"grid: {{optimizer.lr: {lrs}, beta: {betas}}}\n")
    experiment = load_experiment(path)  # its time is a benchmark's: make bench-expand
    assert len(experiment.points) == 100_000 and len({p.key for p in experiment.points}) == 100_000
    assert experiment.points[-1].config.beta == 25.0 and experiment.points[-1].config.optimizer.lr == 0.4
    assert experiment.points[-1].name == "lr=0.4 beta=25 seed=0"


def test_more_than_a_thousand_runs_ask_for_yes(tmp_path, store, capsys) -> None:
    lrs = [round(0.01 * (i + 1), 6) for i in range(1001)]
    path = _file(tmp_path, f"grid: {{optimizer.lr: {lrs}}}\n")
    _one_line_exit_2(capsys, ["experiment", str(path), "--tracking-uri", store], "1001 runs", "--yes", "max_runs")
    assert main(["experiment", str(path), "--tracking-uri", store, "--dry-run"]) == 0  # a dry run asks nothing
    capped = _file(tmp_path, f"grid: {{optimizer.lr: {lrs}}}\nmax_runs: 1000\n", "capped.yaml")
    _one_line_exit_2(capsys, ["experiment", str(capped), "--tracking-uri", store], "1001 runs", "max_runs: 1000")


# -- make experiment installs what running needs ---------------------------------------------------------
def test_make_experiment_installs_only_what_running_needs() -> None:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make not installed")
    dry = subprocess.run([make, "-n", "-B", "experiment"], cwd=ROOT, capture_output=True, text=True, check=True)
    installs = [line for line in dry.stdout.splitlines() if "pip install" in line and "-e" in line]
    assert installs and all("[dev]" not in line for line in installs), dry.stdout
    dry = subprocess.run([make, "-n", "-B", "test"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert any("[dev]" in line for line in dry.stdout.splitlines() if "pip install" in line), dry.stdout

