"""The LightningModule: the image is the only parameter, VGG never saved, seeded, clamped."""

from dataclasses import replace
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from nst.config import LayersConfig, OptimizerConfig, TransferConfig
from nst.determinism import deterministic
from nst.images import load_image
from nst.losses import style_transfer_losses
from nst.module import StyleTransfer
from nst.stopping import NEVER, DivergedError, Stops
from nst.targets import build_backbone
from tests.lane import ACCELERATOR, DEVICE

CONFIG = TransferConfig(iterations=4, layers=LayersConfig(content=("relu3_1",), style={"relu1_1": 0.5, "relu2_1": 0.5}))


@pytest.fixture(scope="module")
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    images = Path(__file__).resolve().parents[1] / "experiments" / "images"
    content = load_image(images / "grace_hopper.jpg", 40)
    style = load_image(images / "starry_night.jpg", (content.shape[3], content.shape[2]))
    return content, style


def _fit(module: StyleTransfer, steps: int, tmp_path: Path | None = None) -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator=ACCELERATOR, default_root_dir=tmp_path,
    )
    trainer.fit(module)
    return trainer


def test_the_image_is_the_only_trainable_parameter(pair) -> None:
    module = StyleTransfer(*pair, CONFIG)
    params = list(module.named_parameters())
    assert [name for name, _ in params] == ["image"]
    assert params[0][1].requires_grad and params[0][1].shape == pair[0].shape
    assert list(module.state_dict()) == ["image"]


def test_checkpoint_holds_no_vgg_weights(pair, tmp_path) -> None:
    module = StyleTransfer(*pair, CONFIG)
    trainer = _fit(module, 2, tmp_path)
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    assert list(checkpoint["state_dict"]) == ["image"]
    assert path.stat().st_size < 1_000_000  # the VGG alone would be ~80 MB


def test_init_modes(pair) -> None:
    content, _ = pair
    as_content = StyleTransfer(*pair, TransferConfig(init="content", layers=CONFIG.layers))
    torch.testing.assert_close(as_content.image01(), content)
    seed = StyleTransfer(*pair, CONFIG)  # content+noise: 0.6 noise (+-20/255) + 0.4 content
    mixed = seed.image01()
    mean = torch.tensor([123.68, 116.779, 103.939]).view(1, 3, 1, 1) / 255
    residual = mixed - (mean + 0.4 * (content - mean))
    assert residual.abs().max() <= 0.6 * 20 / 255 + 1e-6
    assert residual.std() > 0.01  # there is noise
    noise = StyleTransfer(*pair, TransferConfig(init="noise", layers=CONFIG.layers)).image01()
    assert (noise - mean).abs().max() <= 20 / 255 + 1e-6


def test_same_seed_same_image_other_seed_other_image(pair) -> None:
    images = []
    for seed in (0, 0, 1):
        module = StyleTransfer(*pair, TransferConfig(iterations=3, seed=seed, layers=CONFIG.layers))
        with deterministic():  # a GPU's default kernels may sum in another order from run to run
            _fit(module, 3)
        images.append(module.image.detach().clone())
    assert torch.equal(images[0], images[1])
    assert not torch.equal(images[0], images[2])


def test_a_bf16_step_gives_the_bits_of_autocast_casting_the_weights_each_step(pair) -> None:
    """A bf16 step runs a twin of the VGG whose weights were cast to bf16 once: the losses and the
    gradient are those of autocast casting the fp32 weights at every step. The twin is never saved,
    and follows the module to another device."""
    config = replace(CONFIG, precision="bf16")
    module = StyleTransfer(*(t.to(DEVICE) for t in pair), [config, replace(config, beta=4.0)],
                           backbone=build_backbone(config).to(DEVICE))
    ours = module.losses()
    ours["loss/total"].sum().backward()
    grad, module.image.grad = module.image.grad, None
    with torch.autocast(module.image.device.type, dtype=torch.bfloat16, cache_enabled=False):
        feats = module.vgg(module.image01(), [*module.content_layers, *module.style_layers])
    reference = style_transfer_losses(
        feats, {n: getattr(module, f"content_target_{n}") for n in module.content_layers},
        {n: getattr(module, f"style_gram_{n}") for n in module.style_layers}, module.style_weights,
        module.image01(), module.alpha, module.beta, module.gamma)
    reference["loss/total"].sum().backward()
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in ours)
    assert torch.equal(grad, module.image.grad)
    assert module._bf16_vgg().layers[0].weight.dtype == torch.bfloat16
    assert module.vgg.layers[0].weight.dtype == torch.float32  # the targets' and the probe's VGG
    assert list(module.state_dict()) == ["image"]
    module.to("meta")
    assert module._bf16_vgg().layers[0].weight.device.type == "meta"


def test_a_module_computes_where_its_image_is_whatever_lightning_last_said(pair) -> None:
    """Lightning's `device` changes only when Lightning moves the module: one built from tensors
    already on a GPU (as the benchmarks build theirs) still says cpu. The module computes where its
    image is, in the precision that device gets (on the GPU lane a stale bf16 module entered autocast
    for the CPU and failed). Here Lightning's record is made stale by hand: the CPU has no other device."""
    config = replace(CONFIG, precision="bf16")
    module = StyleTransfer(*(t.to(DEVICE) for t in pair), [config], backbone=build_backbone(config).to(DEVICE))
    expected = module.losses()
    module._device = torch.device("meta")  # what Lightning would say after a move it never made
    got = module.losses()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_pixels_stay_in_range_even_with_a_huge_lr(pair) -> None:
    """Adam and SGD project the pixels back into 0..255 after every step."""
    config = TransferConfig(iterations=3, layers=CONFIG.layers, optimizer=OptimizerConfig(lr=1000.0))
    module = StyleTransfer(*pair, config)
    _fit(module, 3)
    assert module.image.min() >= 0 and module.image.max() <= 255
    assert module.image.min() == 0 or module.image.max() == 255  # the clamp did bite


@pytest.mark.parametrize("name", ["adam", "sgd", "lbfgs"])
def test_every_optimizer_lowers_the_loss(pair, name) -> None:
    lr = {"adam": 1.0, "sgd": 1e-9, "lbfgs": 1.0}[name]
    config = TransferConfig(iterations=8, layers=CONFIG.layers, optimizer=OptimizerConfig(name=name, lr=lr))
    module = StyleTransfer(*pair, config)
    before = module.losses()["loss/total"].item()
    _fit(module, 8)
    assert module.losses()["loss/total"].item() < before


def test_divergence_is_masked_on_the_device_and_reported_with_its_step(pair, monkeypatch) -> None:
    """The image whose loss turns NaN keeps its last finite state; the others in its batch go on."""
    configs = [replace(CONFIG, optimizer=OptimizerConfig(lr=lr)) for lr in (1.0, 2.0, 3.0)]
    module = StyleTransfer(*pair, configs)
    real = StyleTransfer.losses
    images = {}

    def poisoned(self):  # a fault only a mock can force: image 1's loss turns NaN at step 2
        images[self.trainer.global_step] = self.image.detach().clone()
        losses = real(self)
        if self.trainer.global_step == 2:
            nan = torch.tensor([1.0, float("nan"), 1.0], device=self.device)
            losses["loss/total"] = losses["loss/total"] * nan
        return losses

    monkeypatch.setattr(StyleTransfer, "losses", poisoned)
    _fit(module, 4)
    reasons = module.stops.reasons()
    assert reasons[1] == str(DivergedError(2, float("nan"))) and reasons[0] is None and reasons[2] is None
    assert torch.equal(module.image[1].cpu(), images[2][1].cpu())  # still the image whose J was last finite
    assert not torch.equal(module.image[0].cpu(), images[3][0].cpu())  # the others moved on
    assert module.stops.moving.tolist() == [True, False, True]


def test_a_step_marks_nan_and_both_infinities_as_diverged_in_a_few_kernels() -> None:
    """Each step launches the divergence check (on a GPU, ~25 us of the host's time per kernel): 7 kernels
    where torch's isfinite, a where and a copy per record took 13."""
    from benchmarks.floor import Traffic

    stops = Stops([CONFIG] * 4, torch.device(DEVICE))
    traffic = Traffic()
    with traffic:
        keep = stops.diverge(5, torch.tensor([1.0, float("nan"), float("inf"), -float("inf")], device=DEVICE))
    assert sum(traffic.kernels.values()) <= 7
    assert keep.tolist() == [True, False, False, False] and stops.moving.tolist() == keep.tolist()
    assert stops.diverged_at.tolist() == [NEVER, 5, 5, 5]
    stops.diverge(6, torch.tensor([float("nan")] * 4, device=DEVICE))  # the stopped ones keep their first record
    assert stops.diverged_at.tolist() == [6, 5, 5, 5]
    assert stops.diverged_value[2:].tolist() == [float("inf"), -float("inf")]


def test_backbone_is_cut_at_the_deepest_loss_layer() -> None:
    assert build_backbone(CONFIG).names[-1] == "relu3_1"
    assert build_backbone(TransferConfig()).names[-1] == "relu5_1"


def test_adam_ignores_the_loss_scale(pair) -> None:
    """Why alpha/beta magnitudes and loss normalizations do not decide Adam's speed: scaling
    the whole loss by 1000 leaves Adam's steps (nearly) unchanged; only beta/alpha matters."""
    images = []
    for scale in (1.0, 1000.0):
        # fp32: bf16 rounds the two scaled losses differently, which is not what this is about.
        config = TransferConfig(iterations=5, alpha=10 * scale, beta=40 * scale, layers=CONFIG.layers,
                                optimizer=OptimizerConfig(lr=1.0), precision="fp32")
        module = StyleTransfer(*pair, config)
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # a GPU's fp32 convolutions default to TF32
            _fit(module, 5)
        images.append(module.image.detach())
    assert (images[0] - images[1]).abs().max() < 1e-2  # in 0-255 units


def test_lbfgs_at_the_seed_loss_scale_descends_without_blowing_up() -> None:
    """At 128 px the seed's J is ~1e12: plain torch L-BFGS went to inf at step 2 (measured)."""
    images = Path(__file__).resolve().parents[1] / "experiments" / "images"
    content = load_image(images / "grace_hopper.jpg", 128)
    style = load_image(images / "starry_night.jpg", (content.shape[3], content.shape[2]))
    config = TransferConfig(iterations=6, optimizer=OptimizerConfig(name="lbfgs", lr=1.0))
    module = StyleTransfer(content, style, config)
    before = module.losses()["loss/total"].item()
    _fit(module, 6)
    after = module.losses()["loss/total"].item()
    assert after < 0.5 * before


@pytest.mark.parametrize("schedule", ["cosine", "exponential"])
def test_lr_schedules_lower_the_logged_lr(pair, schedule) -> None:
    config = TransferConfig(iterations=6, layers=CONFIG.layers,
                            optimizer=OptimizerConfig(lr=1.0, schedule=schedule, gamma=0.5))
    module = StyleTransfer(*pair, config)
    _fit(module, 6)
    assert module.last_lrs[0] < 0.1  # cosine: ~0.07 at step 5 of 6; exponential: 0.5**5
    assert module.last_losses["loss/total"].item() > 0


def test_auto_precision_is_bf16_only_where_the_cpu_has_it() -> None:
    from nst.precision import resolve_precision

    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
