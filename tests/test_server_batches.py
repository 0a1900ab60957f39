"""A batch's runs are opened (created with their tags, params, input images and config.yaml, or
resumed) before its fit, written during it and ended after it, and a sweep's runs read back by the
report: against a tracking server several at once, into and from a SQLite file one at a time; either
way each spec gets its own whole run, in the specs' order, a run that cannot be opened leaves none of
its batch RUNNING, and MLflow prints none of its per-run lines and progress bars."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from benchmarks.cluster import tracking_server
from benchmarks.loops import grid_file
from pipelines.config.grid import load_experiment
from pipelines.config.runs import run_config
from pipelines.execution import opening
from pipelines.execution.run import FAILED, FINISHED, RunSpec, execute_batch
from pipelines.execution.sweep import run_experiment
from pipelines.reports.readback import load_sweep
from pipelines.tracking.run_log import ERROR_TAG

pytestmark = pytest.mark.cpu_only("opening runs is the store's requests: a transfer's device changes none of them")

IMAGES = Path(__file__).resolve().parents[1] / "experiments" / "images"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """`nst server`'s pieces on SQLite, on a free loopback port."""
    with tracking_server("sqlite") as url:
        yield url


def _specs(n: int) -> list[RunSpec]:
    """n runs of one batch, told apart by alpha (1, 2, ..., n)."""
    base = {"content": str(IMAGES / "grace_hopper.jpg"), "style": str(IMAGES / "starry_night.jpg"), "size": 32,
            "iterations": 2, "snapshots": [0]}
    return [RunSpec(run_config({**base, "alpha": float(a)})) for a in range(1, n + 1)]


def test_a_batch_on_a_server_gives_each_spec_its_own_whole_run(server, tmp_path, capfd) -> None:
    # Opened, written (5 writer threads on a CPU) and ended several at a time.
    results = execute_batch(_specs(5), tracking_uri=server, experiment="opened", progress=False)
    assert "View run" not in capfd.readouterr().out  # MLflow's two lines per run end: off
    client = MlflowClient(server)
    runs = [client.get_run(r.run_id) for r in results]
    assert [r.data.params["alpha"] for r in runs] == ["1.0", "2.0", "3.0", "4.0", "5.0"]  # the specs' order
    assert {r.info.status for r in runs} == {FINISHED}
    for r in runs:
        artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"content.png", "style.png", "config.yaml", "final.png"} <= artifacts
        assert [m.step for m in client.get_metric_history(r.info.run_id, "loss/total")] == [0, 1]
        config = Path(client.download_artifacts(r.info.run_id, "config.yaml", str(tmp_path))).read_text()
        assert f"alpha: {r.data.params['alpha']}" in config


@pytest.mark.parametrize("where", ["SQLite", "server"])
def test_a_run_that_cannot_be_opened_leaves_none_of_its_batch_running(where, server, store, monkeypatch) -> None:
    uri = server if where == "server" else store
    start_run = opening._start_run

    def refuse_the_third(client, spec, *args):  # a store that fails one request: the fault is forced
        if spec.config.alpha == 3.0:
            raise RuntimeError("the store refused run 3")
        return start_run(client, spec, *args)

    monkeypatch.setattr(opening, "_start_run", refuse_the_third)
    with pytest.raises(RuntimeError, match="refused run 3"):
        execute_batch(_specs(5), tracking_uri=uri, experiment=f"refused-{where}", progress=False)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(f"refused-{where}").experiment_id])
    # One at a time (SQLite) the batch stops at the third; at once (a server) the other four were opened.
    assert sorted(float(r.data.params["alpha"]) for r in runs) == ([1, 2] if where == "SQLite" else [1, 2, 4, 5])
    assert {r.info.status for r in runs} == {FAILED}
    assert all("could not open every run: the store refused run 3" in r.data.tags[ERROR_TAG] for r in runs)


def test_a_sweep_reads_back_from_a_server_whole_and_in_order(server, tmp_path, capfd) -> None:
    experiment = load_experiment(grid_file(tmp_path, 32, 2, 2))  # 8 points: 2 lr x 2 beta x 2 seeds
    run_experiment(experiment, tracking_uri=server, progress=False, say=lambda _: None)
    sweep = load_sweep(MlflowClient(server), experiment.name)  # read 8 runs at a time
    assert [r.name for r in sweep.runs] == [p.name for p in experiment.points]
    assert all(r.final is not None and r.content is not None and 0 in r.snapshots for r in sweep.runs)
    assert "Downloading artifacts" not in capfd.readouterr().err  # MLflow's bar per download: off
