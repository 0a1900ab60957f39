"""`nst report` on a tiny real sweep, and the claim verdicts on hand-made numbers."""

from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines.cli import main
from pipelines.config import claims as verdicts
from pipelines.config.coerce import ConfigError

IMAGES = Path(__file__).resolve().parents[1] / "experiments" / "images"
SWEEP = f"""
name: tiny_lr
description: three learning rates, tiny
base:
  preset: seed  # the slides' formulation: Adam, batchable (experiment files default to L-BFGS)
  content: {IMAGES / "grace_hopper.jpg"}
  style: {IMAGES / "the_scream.jpg"}
  size: 32
  iterations: 6
  snapshots: [0, 2, 4]
grid:
  optimizer.lr: [0.01, 1.0, 10.0]
claims:
  - {{claim: barely_changes, run: {{optimizer.lr: 0.01}}, step: 4}}
  - {{claim: good, run: {{optimizer.lr: 1.0}}}}
  - {{claim: loses_content, run: {{optimizer.lr: 10.0}}}}
"""


def test_report_builds_from_a_real_sweep(tmp_path, store, capsys) -> None:
    path = tmp_path / "tiny_lr.yaml"
    path.write_text(SWEEP)
    assert main(["experiment", str(path), "--tracking-uri", store, "--quiet"]) == 0
    out = tmp_path / "report"
    assert main(["report", "tiny_lr", "--out", str(out), "--tracking-uri", store]) == 0
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    text = (out / "report.md").read_text()
    assert "![slide](slide.png)" in text and "![losses](losses.png)" in text
    assert "| lr=0.01 seed=0 | 4 |" in text  # the table has a row per run and snapshot
    assert text.count("**PASS**") + text.count("**FAIL**") == 3
    for name in ("slide.png", "losses.png"):
        assert (out / name).stat().st_size > 10_000
    client = MlflowClient(store)
    parent = client.search_runs(
        [client.get_experiment_by_name("tiny_lr").experiment_id], "tags.`nst.sweep_key` LIKE '%'")[0]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/slide.png", "report/losses.png", "report/measurements.csv"} <= logged
    # A name the store has no sweep of: the line names the store and the sweeps it holds.
    assert main(["report", "tiny", "--tracking-uri", store]) == 2
    assert capsys.readouterr().err.strip() == (
        f"nst: error: no sweep 'tiny' in {store} (sweeps there: tiny_lr); run `nst experiment tiny.yaml` first, "
        "or give the store it ran into with --tracking-uri")
    # nst run's experiment holds runs but no sweep: said so.
    assert main(["run", "--content", str(IMAGES / "grace_hopper.jpg"), "--style", str(IMAGES / "the_scream.jpg"),
                 "--set", "size=32", "--set", "iterations=1", "--tracking-uri", store, "--quiet"]) == 0
    capsys.readouterr()
    assert main(["sheet", "nst", "--tracking-uri", store]) == 2
    assert capsys.readouterr().err.strip() == (
        f"nst: error: experiment 'nst' in {store} holds single runs (nst run); nst report and nst sheet read "
        "sweeps (sweeps there: tiny_lr); open single runs in the MLflow UI")
    # A point whose run did not FINISH is not in the report, which says so: its run, its status and why.
    pid = parent.info.run_id
    children = {c.info.run_name: c for c in client.search_runs([parent.info.experiment_id],
                                                                 f"tags.`mlflow.parentRunId` = '{pid}'")}
    client.set_tag(children["lr=10 seed=0"].info.run_id, "nst.error", "diverged at step 3")
    client.set_terminated(children["lr=10 seed=0"].info.run_id, "FAILED")
    assert main(["report", "tiny_lr", "--out", str(out), "--tracking-uri", store]) == 0
    text = (out / "report.md").read_text()
    assert "report: Not in it, none of their runs FINISHED: `lr=10 seed=0` (FAILED: diverged at step 3)." in (
        capsys.readouterr().out)
    assert ", 2 finished runs; " in text
    assert " Not in it, none of their runs FINISHED: `lr=10 seed=0` (FAILED: diverged at step 3).\n" in text
    assert main(["sheet", "tiny_lr", "--out", str(tmp_path / "sheet"), "--tracking-uri", store]) == 0
    assert "\nNot in it, none of their runs FINISHED: `lr=10 seed=0` (FAILED: diverged at step 3).\n" in (
        tmp_path / "sheet" / "sheet.md").read_text()
    # Its claim cannot be judged, and the summary says what it needs (it read "needs needs").
    assert "loses_content (optimizer.lr=10.0): measured no such run, the criterion needs a FINISHED run with" in text
    # A sweep none of whose runs FINISHED (its command still running, or killed): their statuses, and what to do.
    for child in children.values():
        client.update_run(child.info.run_id, status="RUNNING")
    capsys.readouterr()
    assert main(["report", "tiny_lr", "--tracking-uri", store]) == 2
    assert capsys.readouterr().err.strip() == (
        f"nst: error: sweep tiny_lr (parent run {pid}): no FINISHED runs yet (3 RUNNING); reports read FINISHED "
        "runs: wait for its command to end, or run it again if it was stopped (its runs resume)")


@pytest.mark.parametrize("command", ["report", "sheet"])
def test_report_of_an_unknown_experiment_or_store_is_a_clear_error(tmp_path, store, command, capsys) -> None:
    assert main([command, "nope", "--tracking-uri", store]) == 2
    assert f"no sweep 'nope' in {store} (no sweeps there)" in capsys.readouterr().err
    # A store that is not there (a folder where nothing ran): said, and not made as an empty one.
    missing = tmp_path / "elsewhere" / "mlflow.db"
    assert main([command, "lr_sweep", "--tracking-uri", f"sqlite:///{missing}"]) == 2
    assert f"no MLflow store at {missing}: nothing has run into it" in capsys.readouterr().err
    assert not missing.parent.exists()


def _m(move: float = 5.0, style_ratio: float = 0.05, edges: float = 0.8) -> verdicts.Measures:
    return verdicts.Measures(move=move, step=2000, style_ratio=style_ratio, edges=edges)


@pytest.mark.parametrize(
    ("kind", "measures", "passed"),
    [
        ("barely_changes", _m(move=12.0), True),
        ("barely_changes", _m(move=13.0), False),
        ("good", _m(style_ratio=0.05, edges=0.8), True),
        ("good", _m(style_ratio=0.5, edges=0.8), False),  # the style never took
        ("good", _m(style_ratio=0.05, edges=0.3), False),  # the content is gone
        ("loses_content", _m(edges=0.3), True),
        ("loses_content", _m(edges=0.63), False),
    ],
)
def test_verdicts_on_hand_made_numbers(kind, measures, passed) -> None:
    verdict = verdicts.judge(kind, "lr=x", measures)
    assert verdict.passed is passed and verdict.label == ("PASS" if passed else "FAIL")
    assert verdict.criterion and verdict.measured


def test_unknown_claim_is_rejected() -> None:
    with pytest.raises(ConfigError, match="claim: input should be 'barely_changes', 'good' or 'loses_content'"):
        verdicts.select({"claim": "pretty", "run": {}})


def test_report_figures_keep_long_run_names_apart(tmp_path) -> None:
    # 8 runs named by three keys each: their titles ran into each other in one row of thumbnails, their
    # legend covered J's curves, and the slide's title listing them ran across the figure.
    import torch
    from PIL import Image

    from pipelines.reports.figures import _wrap, finals_figure, loss_figure
    from pipelines.reports.readback import RunView

    names = [f"preserve_color={c} style_loss={s} lr={lr} seed=0" for c in ("none", "luminance")
             for s in ("gram", "w2") for lr in (0.5, 2)]
    final = torch.rand(1, 3, 32, 48)
    runs = [RunView(run=None, name=n, varied={}, history={"loss/total": {0: 2.0, 1: 1.0}}, final=final)  # type: ignore[arg-type]
            for n in names]
    with Image.open(finals_figure(runs, tmp_path / "finals.png", dpi=50)) as image:
        assert image.width / image.height < 3  # 4 a row, 2 rows (one row of 8 was 8.9 wide to 1 high)
    with Image.open(loss_figure(runs, tmp_path / "losses.png", "t", dpi=50)) as image:
        assert image.height > 3.8 * 50  # grown by the legend's rows below the plots
    lines = _wrap(names[-1], 2.0, 9).splitlines()  # 2 inches at 9 pt: 24 characters
    assert " ".join(lines) == names[-1] and len(lines) > 1 and max(map(len, lines)) <= 24


def test_a_blends_paintings_show_side_by_side() -> None:
    import torch

    from pipelines.reports.readback import STYLE_FILE, side_by_side

    names = ["style_10.png", "content.png", "style_2.png", "style.png", "final.png"]
    assert sorted(filter(STYLE_FILE.match, names), key=lambda n: (len(n), n)) == [
        "style.png", "style_2.png", "style_10.png"]
    first, second = torch.rand(1, 3, 40, 30), torch.rand(1, 3, 80, 100)
    assert side_by_side([first]) is first
    assert side_by_side([first, second]).shape == (1, 3, 40, 30 + 50)  # the second at the first's height
