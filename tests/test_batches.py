"""A sweep's points optimize together as one batch, each still its own run: the optimizer is torch's
per image, a point gives the same numbers in a batch as alone, a diverging point fails alone, and
points that cannot share a batch never do."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from nst import checkpoints
from nst.config import OptimizerConfig
from nst.module import StyleTransfer
from nst.optim import SampleAdam, SampleSchedules, SampleSGD
from pipelines.cli import main
from pipelines.config.grid import Point, load_experiment
from pipelines.config.runs import run_config
from pipelines.errors import UserError
from pipelines.execution.batches import batch_key, parse_batch, plan, resume_steps
from pipelines.execution.run import FINISHED, RunSpec, execute, execute_batch
from pipelines.execution.sweep import run_experiment
from pipelines.tracking.checkpoint_store import checkpoint_steps
from tests.lane import ACCELERATOR, DEVICE, ON_GPU

IMAGES = Path(__file__).resolve().parents[1] / "experiments" / "images"
#: A point in a batch against the same point alone: the convolutions sum in another order for a batch.
#: Measured over these 30 steps: 2.4e-7 on this CPU (bf16), 1.6e-3 on an H200 (bf16, cuDNN picks other kernels).
J_TOLERANCE = 5e-3 if ON_GPU else 1e-5  # relative, at every step
#: Of 255, in the final 8-bit images: the largest difference, and the mean. On a GPU Adam at lr 1
#: moves a pixel by about lr a step whatever its gradient's size, so a near-zero gradient whose sign
#: flips with the summation order sends a few pixels the other way: 6 at most on an H100 (4 on an H200),
#: nearly every other pixel 0 or 1 apart. The mean bound keeps that "a few".
PIXEL_TOLERANCE = 10 if ON_GPU else 1
PIXEL_MEAN_TOLERANCE = 0.5 if ON_GPU else 1.0


def _config(**keys: object):  # -> RunConfig
    return run_config({"content": str(IMAGES / "grace_hopper.jpg"), "style": str(IMAGES / "starry_night.jpg"),
                       "size": 40, "iterations": 30, "snapshots": [0, 10], **keys})


def _history(client: MlflowClient, run_id: str, key: str = "loss/total") -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


# -- the optimizer: torch's update, image by image ------------------------------------------------
def _gradients(shape: tuple[int, ...], steps: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=generator).to(DEVICE) for _ in range(steps)]


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_per_sample_adam_and_sgd_are_torch_optim_image_by_image(name) -> None:
    lrs, momenta = [0.1, 1.0, 0.1, 3.0], [0.9, 0.5, 0.0, 0.9]
    start = torch.rand(4, 3, 8, 6).to(DEVICE) * 255
    batch = torch.nn.Parameter(start.clone())
    ours = SampleAdam(batch, lrs) if name == "adam" else SampleSGD(batch, lrs, momenta)
    alone = [torch.nn.Parameter(start[b : b + 1].clone()) for b in range(4)]
    theirs = [torch.optim.Adam([p], lr=lr) if name == "adam" else torch.optim.SGD([p], lr=lr, momentum=m)
              for p, lr, m in zip(alone, lrs, momenta, strict=True)]
    for grad in _gradients(start.shape, 5):
        batch.grad = grad.clone()
        ours.step()
        for b, (p, optimizer) in enumerate(zip(alone, theirs, strict=True)):
            p.grad = grad[b : b + 1].clone()
            optimizer.step()
    for b, p in enumerate(alone):
        assert torch.equal(batch.detach()[b : b + 1], p.detach()), f"image {b}"


def test_per_sample_schedules_are_torch_schedulers() -> None:
    configs = [OptimizerConfig(lr=1.0, schedule="cosine"), OptimizerConfig(lr=0.5, schedule="exponential", gamma=0.9),
               OptimizerConfig(lr=0.2)]
    ours = SampleSchedules(configs, iterations=20)
    holders = [torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=c.lr) for c in configs]
    theirs = [torch.optim.lr_scheduler.CosineAnnealingLR(holders[0], T_max=20),
              torch.optim.lr_scheduler.ExponentialLR(holders[1], gamma=0.9)]
    for _ in range(20):
        assert ours.lrs == [holders[0].param_groups[0]["lr"], holders[1].param_groups[0]["lr"], 0.2]
        ours.step()
        for holder, scheduler in zip(holders, theirs, strict=False):
            holder.step()
            scheduler.step()


# -- a batch gives each point its own numbers ------------------------------------------------------
def test_a_point_in_a_batch_gives_what_it_gives_alone(store) -> None:
    points = [_config(optimizer={"lr": 0.5}), _config(optimizer={"lr": 1.0}, alpha=100.0, seed=3),
              _config(optimizer={"lr": 2.0, "schedule": "cosine"}, gamma=10.0, stop={"rel_improvement": 1e-9})]
    batch = execute_batch([RunSpec(c, run_name=f"batch {i}") for i, c in enumerate(points)], tracking_uri=store,
                          experiment="same", progress=False)
    alone = [execute(c, tracking_uri=store, experiment="same", progress=False) for c in points]
    client = MlflowClient(store)
    for i, (b, a) in enumerate(zip(batch, alone, strict=True)):
        assert b.status == a.status == FINISHED, (b.error, a.error)
        mine, theirs = _history(client, b.run_id), _history(client, a.run_id)
        assert [s for s, _ in mine] == [s for s, _ in theirs] == list(range(30))
        assert max(abs(x - y) / abs(y) for (_, x), (_, y) in zip(mine, theirs, strict=True)) < J_TOLERANCE, i
        assert _history(client, b.run_id, "lr") == _history(client, a.run_id, "lr")  # the same schedule, exactly
        images = [np.asarray(Image.open(r.final_image), dtype=np.int16) for r in (b, a)]
        gap = np.abs(images[0] - images[1])
        assert gap.max() <= PIXEL_TOLERANCE and gap.mean() <= PIXEL_MEAN_TOLERANCE, (i, gap.max(), gap.mean())
        assert client.get_run(b.run_id).data.tags["nst.batch_size"] == "3"


def test_each_point_of_a_batched_sweep_is_its_own_complete_run(tmp_path, store, capsys) -> None:
    path = tmp_path / "batched.yaml"
    path.write_text(f"""
name: batched
base: {{preset: seed, content: {IMAGES / "grace_hopper.jpg"}, style: {IMAGES / "starry_night.jpg"}, size: 32,
        iterations: 12, snapshots: [0, 5], checkpoint_every: 4}}
grid: {{optimizer.lr: [0.5, 1.0, 2.0], beta: [40, 4]}}
""")
    assert main(["experiment", str(path), "--tracking-uri", store, "--quiet", "--batch", "4"]) == 0
    out = capsys.readouterr().out
    assert out.count("(a batch of 4)") == 4 and out.count("(a batch of 2)") == 2
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("batched").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 6 and {c.info.status for c in children} == {"FINISHED"}
    assert len({c.data.tags["nst.run_key"] for c in children}) == 6
    for child in children:
        run_id = child.info.run_id
        assert [s for s, _ in _history(client, run_id)] == list(range(12))
        assert {m.step for m in client.get_metric_history(run_id, "quality/ssim_content")} == {0, 5, 12}
        names = {a.path for a in client.list_artifacts(run_id)}
        assert {"final.png", "config.yaml", "content.png", "style.png", "images"} <= names
        # A FINISHED run never resumes: the checkpoints it saved (every 4 steps) went with their tags.
        assert "checkpoint" not in names and not checkpoint_steps(child.data.tags)
        assert child.data.tags["nst.stop_reason"] == "ran all 12 steps"


def test_a_diverging_point_fails_alone_and_its_batch_goes_on(tmp_path, store, monkeypatch) -> None:
    path = tmp_path / "diverge.yaml"
    path.write_text(f"""
name: diverge
base: {{preset: seed, content: {IMAGES / "grace_hopper.jpg"}, style: {IMAGES / "starry_night.jpg"}, size: 32,
        iterations: 8, snapshots: [0]}}
grid: {{optimizer.lr: [0.5, 1.0, 2.0]}}
""")
    real = StyleTransfer.losses

    def poisoned(self):  # image 1 (lr=1) diverges at step 3
        losses = real(self)
        if self.trainer.global_step == 3:
            nan = torch.tensor([1.0 if c.optimizer.lr != 1.0 else float("nan") for c in self.configs],
                               device=self.device)
            losses["loss/total"] = losses["loss/total"] * nan
        return losses

    monkeypatch.setattr(StyleTransfer, "losses", poisoned)
    assert main(["experiment", str(path), "--tracking-uri", store, "--quiet", "--batch", "3"]) == 1
    client = MlflowClient(store)
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("diverge").experiment_id])
            if "mlflow.parentRunId" in r.data.tags}
    failed = runs.pop("lr=1 seed=0")
    assert failed.info.status == "FAILED" and failed.data.tags["nst.error"].startswith("diverged at step 3")
    assert [s for s, _ in _history(client, failed.info.run_id)] == [0, 1, 2]
    assert "last_finite.png" in {a.path for a in client.list_artifacts(failed.info.run_id)}
    for run in runs.values():
        assert run.info.status == "FINISHED" and [s for s, _ in _history(client, run.info.run_id)] == list(range(8))


def test_a_converged_point_ends_at_its_step_while_its_batch_goes_on(store) -> None:
    points = [_config(optimizer={"lr": 1e-4}, stop={"rel_improvement": 0.5, "window": 3}), _config()]
    converged, full = execute_batch([RunSpec(c) for c in points], tracking_uri=store, experiment="stop",
                                    progress=False)
    client = MlflowClient(store)
    assert client.get_run(converged.run_id).data.tags["nst.stop_reason"].startswith("converged at step 3")
    assert [s for s, _ in _history(client, converged.run_id)] == [0, 1, 2, 3]
    assert [s for s, _ in _history(client, full.run_id)] == list(range(30))


# -- which points share a batch ----------------------------------------------------------------------
def test_points_share_a_batch_only_when_they_differ_in_per_image_settings() -> None:
    base = _config()
    same = [base, _config(optimizer={"lr": 2.0}), _config(alpha=1.0, seed=4, snapshots=[3]),
            _config(layers={"content": ["relu4_2"], "style": {f"relu{i}_1": 0.1 * i for i in range(1, 6)}})]
    assert len({batch_key(c) for c in same}) == 1
    for other in (_config(size=48), _config(optimizer={"name": "sgd"}), _config(precision="fp32"),
                  _config(layers={"content": ["relu3_1"]}), _config(scales=[24]), _config(checkpoint_every=7)):
        assert batch_key(other) != batch_key(base)
    points = [*same, _config(size=48), _config(optimizer={"name": "lbfgs"}), _config(optimizer={"name": "lbfgs"})]
    batches = plan(points, lambda c: c, lambda c: 0, 3)
    assert [len(b) for b in batches] == [3, 1, 1, 1, 1]  # cap 3; size 48 apart; L-BFGS one at a time
    resumed = plan(same, lambda c: c, lambda c: 100 if c is same[0] else 0, 8)
    assert [len(b) for b in resumed] == [1, 3]  # runs resumed from step 100 stand apart from fresh ones


def test_batches_for_ray_gpus_are_planned_for_a_gpu_whatever_the_driver_has() -> None:
    from pipelines.execution.ray_executor import batch_cap

    points = [_config(size=128, optimizer={"lr": 0.1 * i}) for i in range(1, 11)]

    def sizes(cap):
        return [len(b) for b in plan(points, lambda c: c, lambda c: 0, "auto", cap)]
    assert sizes(batch_cap({"num_gpus": 0.5})) == [10]  # up to 64: each worker sizes its batch to its GPU
    assert sizes(batch_cap({"num_cpus": 2})) == [4, 4, 2]  # CPU workers: 4 images of 128 px, as here
    assert [len(b) for b in plan([replace(p, device="cpu") for p in points], lambda c: c, lambda c: 0, "auto",
                                 batch_cap({"num_gpus": 1}))] == [4, 4, 2]


def test_the_ray_driver_says_up_to_where_a_worker_may_split_the_batch() -> None:
    """A GPU batch planned by --batch auto is sized again by its worker's GPU, which the driver cannot
    see: its line says "up to". A fixed --batch N, or CPU workers (sized as planned), say the batch."""
    from pipelines.execution.executors import Job, Task
    from pipelines.execution.ray_executor import announcement
    from pipelines.execution.run import RunSpec

    tasks = [Task(Point(i, _config(), {}, f"p{i}", f"k{i}"), RunSpec(_config())) for i in range(3)]
    auto, fixed = Job(tasks, "sqlite://", "x", auto=True), Job(tasks, "sqlite://", "x")
    assert announcement(auto, tasks[0], {"num_gpus": 0.5}) == "start (a batch of up to 3) on Ray"
    assert announcement(fixed, tasks[0], {"num_gpus": 0.5}) == "start (a batch of 3) on Ray"
    assert announcement(auto, tasks[0], {"num_cpus": 2}) == "start (a batch of 3) on Ray"
    alone = Job(tasks[:1], "sqlite://", "x", auto=True)
    assert announcement(alone, tasks[0], {"num_gpus": 1}) == "start on Ray"


def test_a_batch_planned_larger_than_fits_here_runs_as_batches_that_do(tmp_path, store, capsys) -> None:
    """As a Ray driver without a GPU plans a GPU's batch: the machine that runs it sizes it down."""
    path = tmp_path / "planned.yaml"
    path.write_text(f"""
name: planned
base: {{preset: seed, content: {IMAGES / "grace_hopper.jpg"}, style: {IMAGES / "starry_night.jpg"}, size: 128,
        iterations: 2, snapshots: [0], checkpoint_every: 0, device: cpu}}
grid: {{optimizer.lr: [0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]}}
""")
    done = run_experiment(load_experiment(path), tracking_uri=store, progress=False, say=print,
                          batch="auto", batch_cap=lambda config: 64)
    out = capsys.readouterr().out
    assert out.count("start (a batch of 10)") == 10  # as planned
    # As run: 4 × 128² px on a CPU; 10 is more than twice that (up to twice, a batch runs as planned).
    assert out.count("at most 4 at once here: start (a batch of 4)") == 8, out
    assert out.count("at most 4 at once here: start (a batch of 2)") == 2
    client = MlflowClient(store)
    assert [r.status for _, r in done.results] == [FINISHED] * 10
    assert [client.get_run(r.run_id).data.tags["nst.batch_size"] for _, r in done.results] == ["4"] * 8 + ["2"] * 2


def test_runs_killed_between_their_checkpoints_resume_together() -> None:
    a, b = _config(), _config(size=48)  # two batch keys
    # Each run holds its last two checkpoints' steps. A batch killed between its runs' saves at 60;
    # another at 120; a lone run of the other key; a run that never checkpointed; one not interrupted.
    configs = [a, a, a, a, b, a, a]
    held = [{40, 60}, {20, 40}, {100, 120}, {100, 120}, {40, 60}, set(), set()]
    assert resume_steps(configs, held) == [40, 40, 120, 120, 60, 0, 0]


def test_a_batch_refuses_configs_that_cannot_share_one() -> None:
    content = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="must share precision"):
        StyleTransfer(content, content, [_config(), _config(precision="fp32")])
    with pytest.raises(ValueError, match="L-BFGS runs one image at a time"):
        StyleTransfer(content, content, [_config(optimizer={"name": "lbfgs"})] * 2)


def test_batch_option_is_checked() -> None:
    assert parse_batch("auto") == "auto" and parse_batch("8") == 8
    for bad in ("0", "-2", "many", "1.5"):
        with pytest.raises(UserError, match="--batch"):
            parse_batch(bad)


def test_a_batch_checkpoint_splits_into_each_runs_own_and_stacks_back(tmp_path) -> None:
    import pytorch_lightning as pl

    content = torch.rand(1, 3, 32, 32)
    module = StyleTransfer(content, content, [_config(optimizer={"lr": lr}, average=0.5) for lr in (0.5, 1.0, 2.0)])
    trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator=ACCELERATOR, default_root_dir=tmp_path)
    trainer.fit(module)
    whole = trainer._checkpoint_connector.dump_checkpoint()
    parts = checkpoints.split(whole)
    assert [p["state_dict"]["image"].shape[0] for p in parts] == [1, 1, 1]
    assert [p["state_dict"]["average_image"].shape[0] for p in parts] == [1, 1, 1]  # iterate averaging's too
    assert [p["optimizer_states"][0]["param_groups"][0]["lrs"] for p in parts] == [[0.5], [1.0], [2.0]]
    assert all(len(p["optimizer_states"][0]["state"][0]["exp_avg"]) == 1 for p in parts)
    again = checkpoints.stack(parts)
    for key in ("image", "average_image", "average_weight"):
        assert torch.equal(again["state_dict"][key], whole["state_dict"][key])
    for key in ("exp_avg", "exp_avg_sq", "step"):
        mine, theirs = again["optimizer_states"][0]["state"][0][key], whole["optimizer_states"][0]["state"][0][key]
        assert all(torch.equal(a, b) for a, b in zip(mine, theirs, strict=True))
    assert again["nst"][checkpoints.SAMPLES] == whole["nst"][checkpoints.SAMPLES]
