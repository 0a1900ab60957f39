"""`nst lr-find`: the rule picks the fastest lr that keeps the content; probes are one MLflow sweep."""

from __future__ import annotations

import shlex
from pathlib import Path

from mlflow import MlflowClient

from pipelines.cli import main
from pipelines.config.yaml_files import parse_set
from pipelines.lr_find import Probe, find_lr, log_range, recommend, run_command

IMAGES = Path(__file__).resolve().parents[1] / "experiments" / "images"


def test_log_range_spans_the_decades() -> None:
    assert log_range(0.01, 100, 5) == [0.01, 0.1, 1.0, 10.0, 100.0]
    assert log_range(0.01, 100, 13)[6] == 1.0


def test_one_step_below_the_fastest_lr_that_keeps_the_content() -> None:
    probes = [Probe(0.1, "FINISHED", 9.0, 0.9, 0.95), Probe(0.3, "FINISHED", 5.0, 0.5, 0.9),
              Probe(1.0, "FINISHED", 3.0, 0.3, 0.7), Probe(3.0, "FINISHED", 4.0, 0.4, 0.6),
              Probe(10.0, "FINISHED", 1.0, 0.1, 0.2), Probe(100.0, "FAILED", None, None, None)]
    best, why = recommend(probes)
    # lr 10 is lowest but lost the photo; lr 1 is the fastest that kept it; one step below is 0.3.
    assert best.lr == 0.3 and "one probe below lr 1" in why
    assert recommend(probes[2:])[0].lr == 1.0  # nothing below the fastest: the fastest itself


def test_when_nothing_keeps_the_content_the_smallest_lr_is_the_safe_answer() -> None:
    best, why = recommend([Probe(1.0, "FINISHED", 3.0, 0.3, 0.1), Probe(10.0, "FINISHED", 1.0, 0.1, 0.2)])
    assert best.lr == 1.0 and "no probe kept" in why


def test_lr_find_runs_probes_as_one_sweep_and_recommends(store, tmp_path, capsys) -> None:
    code = main(["lr-find", "--content", str(IMAGES / "grace_hopper.jpg"), "--style", str(IMAGES / "starry_night.jpg"),
                 "--size", "32", "--iterations", "4", "--lr-min", "0.1", "--lr-max", "10", "--points", "3",
                 "--out", str(tmp_path), "--tracking-uri", store, "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert "recommended lr:" in out and "<- recommended" in out
    assert (tmp_path / "lr_find.png").stat().st_size > 0
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("lr_find").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 3
    assert sorted(float(c.data.params["optimizer.lr"]) for c in children) == [0.1, 1.0, 10.0]
    recommended = parents[0].data.tags["nst.lr_find.recommended"]
    assert f"recommended lr: {recommended} " in out
    assert {(c.data.params["preset"], c.data.params["optimizer.name"]) for c in children} == {("seed", "adam")}
    # The line to use it runs the formulation probed (`--set optimizer.lr=…` alone would hand the lr to
    # the default recipe's L-BFGS): run as printed, at a tiny size.
    (line,) = [line for line in out.splitlines() if line.startswith("use it: ")]
    words = shlex.split(line.removeprefix("use it: "))
    words = words[words.index("run"):]  # after how nst was called: here `python -m pipelines.cli`
    assert f"optimizer.lr={recommended}" in words
    assert main([*words, "--set", "size=32", "--set", "iterations=2", "--tracking-uri", store, "--quiet"]) == 0
    (run,) = client.search_runs([client.get_experiment_by_name("nst").experiment_id])
    assert (run.data.params["preset"], run.data.params["optimizer.name"]) == ("seed", "adam")
    assert run.data.params["optimizer.lr"] == str(float(recommended))


def test_the_line_to_use_the_lr_keeps_the_probes_settings() -> None:
    overrides = dict(parse_set(s) for s in ("beta=4e-4", "layers.content=[relu3_1]", "preset=default",
                                            "optimizer.name=adam", "optimizer.lr=99"))
    words = shlex.split(run_command("my photo.jpg", ["a.jpg", "b.jpg"], overrides, 2.2))
    assert words[:9] == ["run", "--content", "my photo.jpg", "--style", "a.jpg", "--style", "b.jpg",
                         "--preset", "default"]
    sets = dict(parse_set(words[i + 1]) for i, w in enumerate(words) if w == "--set")
    # The user's values as they gave them (YAML reads 4e-4 as text; the config turns it into a number).
    assert sets == {"beta": "4e-4", "layers.content": ["relu3_1"], "optimizer.name": "adam", "optimizer.lr": 2.2}


def test_find_lr_probes_adam_on_the_seed_formulation_for_every_caller(store) -> None:
    # `make lr-find-check` calls find_lr directly: its probes once ran the default recipe (L-BFGS),
    # which has no lr to find and diverged from lr 2.2 up.
    base = {"content": str(IMAGES / "grace_hopper.jpg"), "style": str(IMAGES / "starry_night.jpg"),
            "size": 32, "iterations": 2, "snapshots": [0], "checkpoint_every": 0}
    probes, _, _, parent = find_lr(base, [0.1, 10.0], tracking_uri=store, name="probes", say=lambda _: None)
    assert [p.status for p in probes] == ["FINISHED", "FINISHED"]
    client = MlflowClient(store)
    children = client.search_runs([client.get_experiment_by_name("probes").experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    assert {(c.data.params["preset"], c.data.params["optimizer.name"]) for c in children} == {("seed", "adam")}


def test_lr_find_rejects_an_empty_range(capsys) -> None:
    code = main(["lr-find", "--content", "a.jpg", "--style", "b.jpg", "--lr-min", "1", "--lr-max", "0.1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "need 0 < lr-min < lr-max" in err
