"""CUDA graphs (nst.graphs): under `cuda_graph: true` a GPU replays each step's losses and gradient from
one captured graph, with the same bits as the step launched op by op; elsewhere, and for L-BFGS and
W2, the step runs op by op and the run's `nst.cuda_graph` tag says why. The CPU lane checks the
switch and its tag; the GPU lane (make test-gpu) checks the replays themselves."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from mlflow import MlflowClient
from PIL import Image

from nst.config import LayersConfig, OptimizerConfig, TransferConfig
from nst.determinism import deterministic
from nst.graphs import CapturedStep, why_not_captured
from nst.images import load_image
from nst.module import StyleTransfer
from nst.targets import build_backbone
from pipelines.config.runs import RunConfig, run_config
from pipelines.execution.run import FINISHED, RunSpec, execute_batch
from pipelines.tracking.tags import CUDA_GRAPH_TAG
from tests.lane import ACCELERATOR, DEVICE, ON_GPU, gpu_only

IMAGES = Path(__file__).resolve().parents[1] / "experiments" / "images"
LAYERS = LayersConfig(content=("relu3_1",), style={"relu1_1": 0.5, "relu2_1": 0.5})


def test_what_a_graph_can_hold() -> None:
    cuda = torch.device("cuda")
    assert why_not_captured(cuda, "adam", "gram") is None
    assert why_not_captured(cuda, "sgd", "gram") is None
    assert why_not_captured(torch.device("cpu"), "adam", "gram") == "CUDA graphs need a CUDA device"
    assert "L-BFGS" in str(why_not_captured(cuda, "lbfgs", "gram"))
    assert "w2" in str(why_not_captured(cuda, "adam", "w2"))


def _batch(store: str, cuda_graph: bool | str, optimizer: dict[str, object], **keys: object
           ) -> list[tuple[list[float], np.ndarray, str]]:
    """A batch of three runs (three learning rates, one of them stopping early), tracked; per run its
    J at every step, its final image and its nst.cuda_graph tag."""
    base = {"content": str(IMAGES / "grace_hopper.jpg"), "style": str(IMAGES / "starry_night.jpg"), "size": 40,
            "iterations": 12, "snapshots": [0, 6], "deterministic": True, "cuda_graph": cuda_graph,
            "layers": {"content": ["relu3_1"], "style": {"relu1_1": 0.5, "relu2_1": 0.5}}, **keys}
    points = [{"optimizer": {**optimizer, "lr": lr}} for lr in (optimizer["lr"], 2 * optimizer["lr"])]
    points.append({"optimizer": optimizer, "stop": {"rel_improvement": 0.5, "window": 2}})
    specs = [RunSpec(run_config({**base, **point})) for point in points]
    results = execute_batch(specs, tracking_uri=store, experiment="graphs", progress=False)
    assert [r.status for r in results] == [FINISHED] * 3, [r.error for r in results]
    client = MlflowClient(store)
    out = []
    for r in results:
        history = sorted(client.get_metric_history(r.run_id, "loss/total"), key=lambda m: m.step)
        out.append(([m.value for m in history], np.asarray(Image.open(r.final_image)),
                    client.get_run(r.run_id).data.tags.get(CUDA_GRAPH_TAG)))
    return out


@pytest.mark.parametrize("optimizer", [{"name": "adam", "lr": 2.0}, {"name": "sgd", "lr": 1e-9, "momentum": 0.9}],
                         ids=["adam", "sgd"])
def test_a_graphed_batch_gives_the_bits_of_one_run_op_by_op(store, optimizer) -> None:
    graphed, plain = _batch(store, True, optimizer), _batch(store, False, optimizer)
    for (j, image, tag), (j_plain, image_plain, plain_tag) in zip(graphed, plain, strict=True):
        assert tag == ("replayed" if ON_GPU else "op by op: CUDA graphs need a CUDA device")
        assert plain_tag is None  # not asked for, not tagged
        assert j == j_plain
        assert np.array_equal(image, image_plain)
    assert len(graphed[2][0]) < len(graphed[0][0])  # the third run stopped early, in the graphed batch too


def test_by_default_a_gpu_replays_its_steps_and_the_cpu_says_nothing_of_graphs(store) -> None:
    """`cuda_graph: auto`, the default since a GPU check timed it (the lr sweep's fit 2.31× faster on an H200,
    the same final J): a run on a GPU replays its steps and says so; a CPU run, which never could, carries
    no tag about it."""
    assert RunConfig.__dataclass_fields__["cuda_graph"].default == "auto"
    for _, _, tag in _batch(store, "auto", {"name": "adam", "lr": 2.0}):
        assert tag == ("replayed" if ON_GPU else None)


class _Recomputed(CapturedStep):
    """A captured step's contract, kept on the CPU, where CI runs: the losses and the gradient are the
    same tensors at every step, overwritten in place by each replay (here by recomputing them into
    those tensors, as a GPU's replay reruns the captured kernels into the same memory)."""

    made = 0

    def __init__(self, compute, image) -> None:
        type(self).made += 1
        self.compute, self.image = compute, image
        image.grad = None
        self.outputs = compute()
        self.grad = image.grad
        self.graph = self  # CapturedStep.__call__ replays self.graph

    def replay(self) -> None:
        self.image.grad = None
        losses, objective = self.compute()
        for name, value in losses.items():
            self.outputs[0][name].copy_(value)
        self.outputs[1].copy_(objective)
        self.grad.copy_(self.image.grad)


@pytest.mark.cpu_only("it stands in for the CUDA graph: the GPU lane replays real ones")
def test_a_run_reads_a_replayed_steps_tensors_before_the_next_replay(store, monkeypatch) -> None:
    """CI has no GPU: without this, nothing there would run the module's side of a captured step
    (losses read from the capture's tensors, the gradient handed to the optimizer, one capture per
    scale). A batch on a pyramid whose steps replay the stand-in gives the bits of the same batch op by op."""
    with monkeypatch.context() as patched:
        patched.setattr("nst.module.why_not_captured", lambda *args: None)
        patched.setattr("nst.module.CapturedStep", _Recomputed)
        patched.setattr(_Recomputed, "made", 0)
        replayed = _batch(store, True, {"name": "adam", "lr": 2.0}, scales=[32, 40])
        assert _Recomputed.made == 2  # one capture per scale
    plain = _batch(store, False, {"name": "adam", "lr": 2.0}, scales=[32, 40])
    for (j, image, _), (j_plain, image_plain, _) in zip(replayed, plain, strict=True):
        assert j == j_plain and len(j) > 12  # every step of both scales
        assert np.array_equal(image, image_plain)


def _captures(module: StyleTransfer, steps: int) -> list[object]:
    """Fit `steps` steps; the captured graphs the steps replayed."""
    seen: list[object] = []

    class Spy(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            graph = pl_module._captured
            if graph is not None and not any(graph is g for g in seen):
                seen.append(graph)

    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator=ACCELERATOR, callbacks=[Spy()])
    with deterministic():
        trainer.fit(module)
    return seen


@gpu_only
def test_each_scale_of_a_pyramid_is_captured_once_and_replayed() -> None:
    content = load_image(IMAGES / "grace_hopper.jpg", 48)
    style = load_image(IMAGES / "starry_night.jpg", (content.shape[3], content.shape[2]))
    config = TransferConfig(iterations=6, scales=(32, 48), layers=LAYERS, optimizer=OptimizerConfig(lr=2.0))
    configs = [config, replace(config, optimizer=OptimizerConfig(lr=4.0), seed=1)]
    images = []
    for cuda_graph in (True, False):
        module = StyleTransfer(content.to(DEVICE), style.to(DEVICE), configs,
                               backbone=build_backbone(config).to(DEVICE), cuda_graph=cuda_graph)
        captures = _captures(module, module.total_steps)
        assert len(captures) == (2 if cuda_graph else 0)  # one graph per scale, none when not asked for
        images.append(module.result01().cpu())
    assert torch.equal(images[0], images[1])
