"""Each style-transfer option changes the result in its documented direction (tiny images)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from nst import color
from nst.config import LayersConfig, StopConfig, TransferConfig
from nst.determinism import deterministic
from nst.images import load_image
from nst.losses import style_layer_loss
from nst.module import StyleTransfer
from nst.sizes import pyramid
from pipelines.cli import main
from pipelines.config.runs import run_config
from pipelines.execution.run import FINISHED, execute
from tests.lane import ACCELERATOR

IMAGES = Path(__file__).resolve().parents[1] / "experiments" / "images"
CONTENT, STARRY, SCREAM = IMAGES / "grace_hopper.jpg", IMAGES / "starry_night.jpg", IMAGES / "the_scream.jpg"
LAYERS = LayersConfig(content=("relu3_1",), style={"relu1_1": 0.5, "relu2_1": 0.5})


def _run(store: str, **keys: object):  # -> RunResult
    data = {"content": str(CONTENT), "style": str(STARRY), "size": 32, "iterations": 6, "snapshots": [0],
            "layers": {"content": ["relu3_1"], "style": ["relu1_1", "relu2_1"]}, "optimizer": {"lr": 5.0}, **keys}
    result = execute(run_config(data), tracking_uri=store, experiment="features", progress=False)
    assert result.status == FINISHED, result.error
    return result


def _tensor(path: str) -> torch.Tensor:
    return load_image(path, Image.open(path).size)


@pytest.fixture(scope="module")
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    content = load_image(CONTENT, 32)
    return content, load_image(STARRY, (content.shape[3], content.shape[2]))


# -- colour -----------------------------------------------------------------------------------------
def test_luminance_mode_keeps_the_contents_chroma(store) -> None:
    content = load_image(CONTENT, 32)
    chroma = color.rgb_to_yiq(content)[:, 1:]
    kept = color.rgb_to_yiq(_tensor(_run(store, preserve_color="luminance").final_image))[:, 1:]
    plain = color.rgb_to_yiq(_tensor(_run(store).final_image))[:, 1:]
    # I and Q come from the photo (up to 8-bit rounding and clamping); without it they are the painting's.
    assert (kept - chroma).abs().mean() < 0.01
    assert (plain - chroma).abs().mean() > 3 * (kept - chroma).abs().mean()


def test_match_gives_the_style_the_contents_colour_statistics(pair) -> None:
    content, style = pair
    matched = color.match_color(style, content)
    mean = lambda t: t.reshape(3, -1).mean(1)  # noqa: E731
    assert torch.allclose(mean(matched), mean(content), atol=0.02)
    cov = lambda t: torch.cov(t.reshape(3, -1))  # noqa: E731
    # Exact before clipping to 0..1 (the photo has many near-black pixels): 4x closer after it.
    assert (cov(matched) - cov(content)).norm() < 0.25 * (cov(style) - cov(content)).norm()
    assert (mean(style) - mean(content)).abs().max() > 0.05  # it did have to move


def test_match_mode_brings_the_result_closer_to_the_photos_colours(store) -> None:
    content_mean = load_image(CONTENT, 32).reshape(3, -1).mean(1)
    distance = {}
    for mode in ("none", "match"):
        final = _tensor(_run(store, preserve_color=mode, iterations=20).final_image)
        distance[mode] = float((final.reshape(3, -1).mean(1) - content_mean).abs().sum())
    assert distance["match"] < distance["none"]


# -- several styles -------------------------------------------------------------------------------
def test_two_styles_at_blend_1_0_equal_one_style(pair) -> None:
    content, starry = pair
    scream = load_image(SCREAM, (content.shape[3], content.shape[2]))
    config = TransferConfig(iterations=2, layers=LAYERS)
    one = StyleTransfer(content, starry, config)
    two = StyleTransfer(content, [starry, scream], TransferConfig(iterations=2, layers=LAYERS, style_blend=(1, 0)))
    for layer in LAYERS.style:
        assert torch.equal(getattr(one, f"style_gram_{layer}"), getattr(two, f"style_gram_{layer}"))
    assert float(one.losses()["loss/total"].detach()) == float(two.losses()["loss/total"].detach())
    # A 0.7/0.3 blend targets the weighted mean of the two Gram matrices.
    mix = StyleTransfer(content, [starry, scream], TransferConfig(iterations=2, layers=LAYERS, style_blend=(7, 3)))
    other = StyleTransfer(content, scream, config)
    for layer in LAYERS.style:
        expected = 0.7 * getattr(one, f"style_gram_{layer}") + 0.3 * getattr(other, f"style_gram_{layer}")
        assert torch.allclose(getattr(mix, f"style_gram_{layer}"), expected, rtol=1e-5)


def test_style_flag_repeats_for_a_blend_on_the_command_line(store, capsys) -> None:
    code = main(["run", "--content", str(CONTENT), "--style", str(STARRY), "--style", str(SCREAM),
                 "--set", "style_blend=[0.7, 0.3]", "--set", "size=32", "--set", "iterations=2",
                 "--tracking-uri", store, "--quiet"])
    assert code == 0
    run = MlflowClient(store).search_runs([MlflowClient(store).get_experiment_by_name("nst").experiment_id])[0]
    assert run.data.params["style_blend"] == "[0.7, 0.3]"
    assert "the_scream.jpg" in run.data.params["style"]
    names = {a.path for a in MlflowClient(store).list_artifacts(run.info.run_id)}
    assert {"style.png", "style_2.png"} <= names


# -- loss options ---------------------------------------------------------------------------------
def test_gram_normalizations_differ_by_their_documented_factors() -> None:
    generated, target = torch.rand(1, 8, 5, 4), torch.rand(1, 8, 8)
    seed = style_layer_loss(generated, target, "seed")
    assert torch.allclose(style_layer_loss(generated, target, "hw"), 4 * seed)
    assert torch.allclose(style_layer_loss(generated, target, "chw"), 4 * seed / 8**2)


def test_several_content_layers_and_per_layer_style_weights(pair) -> None:
    layers = LayersConfig(content=("relu2_2", "relu3_1"), style={"relu1_1": 0.9, "relu2_1": 0.1})
    module = StyleTransfer(*pair, TransferConfig(iterations=2, layers=layers))
    losses = module.losses()
    single = StyleTransfer(*pair, TransferConfig(iterations=2, layers=LayersConfig(
        content=("relu3_1",), style={"relu1_1": 0.9, "relu2_1": 0.1}))).losses()
    assert float(losses["loss/content"].detach()) > float(single["loss/content"].detach())  # both layers count
    weighted = 0.9 * losses["loss/style/relu1_1"] + 0.1 * losses["loss/style/relu2_1"]
    assert torch.allclose(losses["loss/style"], weighted)


# -- coarse to fine ----------------------------------------------------------------------------------
def test_auto_scales_step_by_root_two_to_the_size() -> None:
    assert pyramid("auto", 512) == [128, 181, 256, 362, 512]
    assert pyramid((), 256) == [256]
    assert pyramid((64, 128), 256) == [64, 128, 256]
    with pytest.raises(ValueError, match="above the run's size"):
        pyramid((64, 512), 256)


def test_pyramid_ends_at_the_target_size_on_one_step_axis(store) -> None:
    result = _run(store, size=64, scales=[32, 48], iterations=3, snapshots=[0, 4])
    client = MlflowClient(store)
    assert Image.open(result.final_image).size == Image.open(result.final_image).size
    assert max(Image.open(result.final_image).size) == 64
    scale = [(m.step, m.value) for m in sorted(client.get_metric_history(result.run_id, "scale"), key=lambda m: m.step)]
    assert scale == [(s, [32.0, 48.0, 64.0][s // 3]) for s in range(9)]
    steps = sorted(m.step for m in client.get_metric_history(result.run_id, "loss/total"))
    assert steps == list(range(9))
    names = {a.path for a in client.list_artifacts(result.run_id, "scales")}
    assert names == {"scales/1_32px.png", "scales/2_48px.png", "scales/3_64px.png"}
    assert max(Image.open(client.download_artifacts(result.run_id, "scales/1_32px.png")).size) == 32


# -- init from a run, stop, quality ---------------------------------------------------------------
def test_init_from_a_previous_run_starts_from_its_final_image(store) -> None:
    first = _run(store)
    second = _run(store, init=f"run:{first.run_id}", iterations=1)
    client = MlflowClient(store)
    images = [a.path for a in client.list_artifacts(second.run_id, "images") if a.path.endswith(".png")]
    start = next(p for p in images if "+step+0+" in p)
    assert torch.equal(_tensor(client.download_artifacts(second.run_id, start)), _tensor(first.final_image))


def test_init_from_an_unknown_run_is_one_line(store, capsys) -> None:
    code = main(["run", "--content", str(CONTENT), "--style", str(STARRY), "--set", "init=run:0123abcd",
                 "--tracking-uri", store, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "run 0123abcd is not in the store" in err


def test_stop_on_convergence_ends_the_run_and_says_why(store) -> None:
    # lr 1e-4 barely moves the image: J improves far less than 50% over any 3 steps.
    result = _run(store, iterations=50, optimizer={"lr": 1e-4}, stop={"rel_improvement": 0.5, "window": 3})
    run = MlflowClient(store).get_run(result.run_id)
    assert run.data.tags["nst.stop_reason"].startswith("converged at step 3")
    assert len(MlflowClient(store).get_metric_history(result.run_id, "loss/total")) == 4
    full = MlflowClient(store).get_run(_run(store).run_id)
    assert full.data.tags["nst.stop_reason"] == "ran all 6 steps"


def test_stop_config_is_validated() -> None:
    with pytest.raises(ValueError, match="window must be > 0"):
        StopConfig(rel_improvement=1e-4, window=0)


def test_quality_metrics_are_logged_with_each_snapshot(store) -> None:
    result = _run(store, iterations=30, snapshots=[0, 10])
    client = MlflowClient(store)
    ssim = {m.step: m.value for m in client.get_metric_history(result.run_id, "quality/ssim_content")}
    style = {m.step: m.value for m in client.get_metric_history(result.run_id, "quality/gram_distance")}
    assert set(ssim) == set(style) == {0, 10, 30}
    assert style[30] < style[0]  # the style statistics move toward the painting's
    assert ssim[30] < ssim[0] <= 1.0  # ... and away from the photo


# Lightning's hint that the data loader cannot resume mid-epoch: nst's only counts steps (as quiet_lightning says).
@pytest.mark.filterwarnings("ignore:.*resuming from a checkpoint that ended before the epoch")
def test_a_pyramid_resumes_mid_scale_bit_identically(pair, tmp_path) -> None:
    import pytorch_lightning as pl

    config = TransferConfig(iterations=3, layers=LAYERS, scales=(16, 24))

    def trainer(steps: int) -> pl.Trainer:
        return pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, accelerator=ACCELERATOR, default_root_dir=tmp_path)

    with deterministic():  # bit-identical on a GPU too
        whole = StyleTransfer(*pair, config)
        trainer(9).fit(whole)
        first = StyleTransfer(*pair, config)
        cut = trainer(4)  # stops one step into the second scale
        cut.fit(first)
        cut.save_checkpoint(tmp_path / "mid.ckpt")
        resumed = StyleTransfer(*pair, config)
        trainer(9).fit(resumed, ckpt_path=tmp_path / "mid.ckpt")
    assert resumed.image.shape == whole.image.shape == pair[0].shape
    assert torch.equal(resumed.image, whole.image)


def test_init_from_a_file_starts_from_that_image(store, tmp_path) -> None:
    start = tmp_path / "start.png"
    Image.new("RGB", (40, 32), (10, 200, 30)).save(start)
    result = _run(store, init=str(start), iterations=1)
    client = MlflowClient(store)
    images = [a.path for a in client.list_artifacts(result.run_id, "images") if a.path.endswith(".png")]
    first = _tensor(client.download_artifacts(result.run_id, next(p for p in images if "+step+0+" in p)))
    assert torch.allclose(first, torch.tensor([10, 200, 30]).view(1, 3, 1, 1) / 255.0, atol=1 / 255)


# -- style options: W2, iterate averaging ---------------------------------------------------------
def test_w2_style_loss_runs_and_lowers_its_loss(store) -> None:
    result = _run(store, style_loss="w2", beta=1000.0, iterations=15)
    history = sorted(MlflowClient(store).get_metric_history(result.run_id, "loss/style"), key=lambda m: m.step)
    assert history[-1].value < 0.7 * history[0].value


def test_iterate_averaging_writes_the_debiased_average_of_the_iterates(pair) -> None:
    import pytorch_lightning as pl

    from nst.config import OptimizerConfig

    iterates: list[torch.Tensor] = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, module, *args) -> None:  # type: ignore[no-untyped-def]
            iterates.append(module.image.detach().clone())

    config = TransferConfig(iterations=4, layers=LAYERS, average=0.5, optimizer=OptimizerConfig(lr=20.0))
    module = StyleTransfer(*pair, config)
    pl.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, accelerator=ACCELERATOR, callbacks=[Record()]).fit(module)
    average, weight = torch.zeros_like(iterates[0]), 0.0
    for image in iterates:
        average, weight = 0.5 * average + 0.5 * image, 0.5 * weight + 0.5
    assert torch.allclose(module.written01() * 255, (average / weight).cpu(), atol=1e-4)
    assert not torch.allclose(module.written01(), module.image01())  # the average is not the last iterate
