"""Where runs compute and what a device's failures look like: deterministic runs are the same bits,
the probe follows the module's device, out of memory and CUDA errors end the run FAILED with one line
and the sweep goes on. The GPU lane (make test-gpu) runs the real faults; the CPU lane forces the
out-of-memory one with a mock, the only way to have it there."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from nst.images import load_image
from nst.module import StyleTransfer
from pipelines.cli import main
from pipelines.config.runs import run_config
from pipelines.execution.probe import quality_probe
from pipelines.execution.run import FINISHED, execute
from tests.lane import DEVICE, gpu_only
from tests.test_batches import J_TOLERANCE

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "experiments" / "images"


def _config(**keys: object):  # -> RunConfig
    return run_config({"content": str(IMAGES / "grace_hopper.jpg"), "style": str(IMAGES / "starry_night.jpg"),
                       "size": 48, "iterations": 25, "snapshots": [0, 10], "optimizer": {"lr": 2.0}, **keys})


def _children(store: str, name: str) -> dict[str, object]:
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    return {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}


def test_deterministic_runs_are_the_same_bits(store) -> None:
    client = MlflowClient(store)
    results = [execute(_config(deterministic=True), tracking_uri=store, experiment="det", progress=False)
               for _ in range(2)]
    assert all(r.status == FINISHED for r in results), [r.error for r in results]
    first, second = (np.asarray(Image.open(r.final_image)) for r in results)
    assert np.array_equal(first, second)
    histories = [[m.value for m in sorted(client.get_metric_history(r.run_id, "loss/total"), key=lambda m: m.step)]
                 for r in results]
    assert histories[0] == histories[1]
    # The flag is the run's alone: torch's process-wide switch is back as it was.
    assert not torch.are_deterministic_algorithms_enabled()
    tags = client.get_run(results[0].run_id).data
    assert tags.tags["nst.device"] == DEVICE and tags.params["deterministic"] == "True"


def test_the_same_seed_starts_from_the_same_image_on_any_device() -> None:
    content = load_image(IMAGES / "grace_hopper.jpg", 32)
    on_cpu = StyleTransfer(content, content, _config()).image.detach()
    on_device = StyleTransfer(content.to(DEVICE), content.to(DEVICE), _config()).image.detach()
    assert torch.equal(on_cpu, on_device.cpu())  # the noise is drawn on the CPU, then moved


@gpu_only
def test_the_probe_follows_the_module_to_the_gpu() -> None:
    """Built on the CPU (as before the Trainer moves the module), called with a GPU image."""
    config = _config()
    content, style = load_image(config.content, 48), load_image(config.style, 48)
    module = StyleTransfer(content, style, config)
    probe = quality_probe(module, content, [style], config)
    module.to("cuda")  # the VGG goes with it
    assert module.vgg.layers[0].weight.is_cuda
    (measures,) = probe(module.result01())
    assert 0 < measures["quality/ssim_content"] <= 1 and measures["quality/gram_distance"] > 0


SWEEP = """
name: memory
base:
  preset: seed  # the slides' formulation: Adam, batchable (experiment files default to L-BFGS)
  content: {content}
  style: {style}
  iterations: 3
  snapshots: [0]
  precision: fp32
grid:
  size: [{big}, 40]
"""


def _forced_out_of_memory(monkeypatch, when: Callable[[StyleTransfer], bool]) -> None:
    """A step of a module for which `when` holds runs out of GPU memory (the CPU cannot: the fault is forced)."""
    real = StyleTransfer.losses

    def losses(self):
        if when(self):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self)

    monkeypatch.setattr(StyleTransfer, "losses", losses)


def test_out_of_memory_fails_that_run_in_one_line_and_the_sweep_goes_on(tmp_path, store, monkeypatch,
                                                                          capsys) -> None:
    path = tmp_path / "memory.yaml"
    path.write_text(SWEEP.format(content=IMAGES / "grace_hopper.jpg", style=IMAGES / "starry_night.jpg", big=64))
    _forced_out_of_memory(monkeypatch, lambda module: module.config.size == 64)
    assert main(["experiment", str(path), "--tracking-uri", store, "--quiet"]) == 1
    runs = _children(store, "memory")
    big, small = runs["size=64 seed=0"], runs["size=40 seed=0"]
    assert small.info.status == "FINISHED" and big.info.status == "FAILED"
    error = big.data.tags["nst.error"]
    assert error.startswith("out of GPU memory at 64 px (fp32)") and "precision: bf16" in error
    assert "\n" not in error and "a smaller size" in error
    assert f"FAILED size=64 seed=0: {error}" in capsys.readouterr().err


SMALLER = """
name: smaller
base: {{preset: seed, content: {content}, style: {style}, size: 32, iterations: 8, snapshots: [0, 4],
        checkpoint_every: 3}}
grid: {{optimizer.lr: [0.5, 1.0, 2.0, 4.0]}}
"""


def test_a_batch_out_of_memory_runs_again_as_smaller_batches_from_its_checkpoint(tmp_path, make_store, monkeypatch,
                                                                                  capsys) -> None:
    path = tmp_path / "smaller.yaml"
    path.write_text(SMALLER.format(content=IMAGES / "grace_hopper.jpg", style=IMAGES / "starry_night.jpg"))
    reference, store = make_store(tmp_path / "reference"), make_store(tmp_path / "store")
    assert main(["experiment", str(path), "--tracking-uri", reference, "--quiet", "--batch", "4"]) == 0
    # Batches of more than 2 images run out of memory at step 5, after the checkpoint of step 3.
    _forced_out_of_memory(monkeypatch, lambda module: module.batch_size > 2 and module.trainer.global_step == 5)
    assert main(["experiment", str(path), "--tracking-uri", store, "--quiet", "--batch", "4"]) == 0
    out = capsys.readouterr().out
    assert out.count("out of memory in a batch of 4: resume run") == 4 and out.count("(a batch of 2)") == 4, out
    runs, theirs = _children(store, "smaller"), _children(reference, "smaller")
    assert len(runs) == 4  # the same runs, resumed: none made anew
    mine_client, their_client = MlflowClient(store), MlflowClient(reference)
    for name, run in runs.items():
        assert run.info.status == "FINISHED" and "nst.error" not in run.data.tags, run.data.tags
        assert run.data.tags["nst.batch_size"] == "2"
        mine = sorted((m.step, m.value) for m in mine_client.get_metric_history(run.info.run_id, "loss/total"))
        other = sorted((m.step, m.value) for m in their_client.get_metric_history(theirs[name].info.run_id,
                                                                                  "loss/total"))
        assert [s for s, _ in mine] == list(range(8))  # every step once: 3 and 4 ran twice, written once
        # From the checkpoint of step 3 on, in a batch of 2: the numbers of the batch of 4 that did not fail.
        assert max(abs(x - y) / abs(y) for (_, x), (_, y) in zip(mine, other, strict=True)) < J_TOLERANCE, name
        measured = {m.step for m in mine_client.get_metric_history(run.info.run_id, "quality/ssim_content")}
        assert measured == {0, 4, 8}
        assert "final.png" in {a.path for a in mine_client.list_artifacts(run.info.run_id)}


def test_runs_that_do_not_fit_alone_either_fail_once_each(tmp_path, store, monkeypatch, capsys) -> None:
    path = tmp_path / "smaller.yaml"
    path.write_text(SMALLER.format(content=IMAGES / "grace_hopper.jpg", style=IMAGES / "starry_night.jpg"))
    _forced_out_of_memory(monkeypatch, lambda module: True)  # not even one image fits
    assert main(["experiment", str(path), "--tracking-uri", store, "--quiet", "--batch", "4"]) == 1
    out = capsys.readouterr().out
    assert out.count("out of memory in a batch of 4") == 4 and out.count("out of memory in a batch of 2") == 4, out
    runs = _children(store, "smaller")
    assert len(runs) == 4
    for run in runs.values():
        error = run.data.tags["nst.error"]
        assert run.info.status == "FAILED" and error.startswith("out of GPU memory at 32 px (")
        assert "a batch of" not in error  # it ran out of memory alone: the way out is no smaller batch


@pytest.mark.heavy
@gpu_only
def test_a_real_out_of_memory_on_the_gpu(tmp_path, store) -> None:
    """A real allocator failure: the process may use ~1 GiB of the GPU; 1536 px in fp32 needs more."""
    path = tmp_path / "memory.yaml"
    path.write_text(SWEEP.format(content=IMAGES / "grace_hopper.jpg", style=IMAGES / "starry_night.jpg", big=1536))
    script = textwrap.dedent(f"""
        import sys, torch
        torch.cuda.set_per_process_memory_fraction(2**30 / torch.cuda.get_device_properties(0).total_memory)
        from pipelines.cli import main
        sys.exit(main(["experiment", {str(path)!r}, "--tracking-uri", {store!r}, "--quiet"]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    runs = _children(store, "memory")
    assert runs["size=40 seed=0"].info.status == "FINISHED"  # the next point ran in the freed memory
    big = runs["size=1536 seed=0"]
    assert big.info.status == "FAILED"
    error = big.data.tags["nst.error"]
    assert error.startswith("out of GPU memory at 1536 px (fp32) on ") and "GiB" in error, error
    assert "Traceback" not in done.stderr


@pytest.mark.heavy
@gpu_only
def test_a_cuda_error_never_leaves_the_run_running(tmp_path, store) -> None:
    """An out-of-bounds index on the GPU (a device-side assert) at step 2 breaks the CUDA context."""
    script = textwrap.dedent(f"""
        import sys, torch
        from nst.module import StyleTransfer
        real = StyleTransfer.losses
        def broken(self):
            if self.trainer.global_step == 2:
                torch.zeros(1, device=self.device)[torch.tensor([10**6], device=self.device)].sum().item()
            return real(self)
        StyleTransfer.losses = broken
        from pipelines.cli import main
        sys.exit(main(["run", "--content", {str(IMAGES / "grace_hopper.jpg")!r},
                       "--style", {str(IMAGES / "starry_night.jpg")!r}, "--set", "size=32",
                       "--set", "iterations=5", "--tracking-uri", {store!r}, "--quiet"]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode != 0
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("nst").experiment_id])
    assert run.info.status == "FAILED", json.dumps(run.data.tags)
    assert "run the same command again" in run.data.tags["nst.error"], run.data.tags["nst.error"]
