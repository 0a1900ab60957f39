"""StyleTransfer: Gatys et al. (2016) as a LightningModule whose only parameter is the image.

The generated image is an `nn.Parameter` of shape (1, 3, H, W), RGB, in units of
`pixel_scale` (255 by default, the seed's scale). The frozen VGG-19 is held outside the
module's registry, so it is never in `state_dict()`, a checkpoint or `parameters()`.
Content and style targets are computed once, at construction. After every step the
losses (keyed by metric name) and the lr are in `last_metrics` for callbacks to log.

Deviations from Gatys et al., on purpose:
- Adam and SGD: pixels are projected back into the valid range [0, pixel_scale] after
  every step (a clamp), so a saved image shows exactly what the losses saw.
- L-BFGS runs one iteration per training step, without line search (as jcjohnson's
  neural-style), so an "iteration" means one step of any optimizer and every step is
  logged. It minimizes J divided by its mean gradient at step 0 (logged losses stay J),
  since torch's L-BFGS has absolute thresholds that fail at the seed's loss scale. It is
  not clamped in the loop: a projection would corrupt its curvature pairs (measured: it
  stalls); its images are clamped when read out.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from nst.config import TransferConfig
from nst.losses import gram, style_transfer_losses
from nst.vgg import LAYER_INDEX, VGGFeatures, load_vgg19


class DivergedError(RuntimeError):
    """A loss became NaN or infinite."""

    def __init__(self, step: int, value: float) -> None:
        super().__init__(f"diverged at step {step} (loss/total = {value})")
        self.step = step


def deepest_layer(config: TransferConfig) -> str:
    return max([*config.layers.content, *config.layers.style], key=LAYER_INDEX.__getitem__)


def build_backbone(config: TransferConfig) -> VGGFeatures:
    """The VGG-19 for this config, cut after the deepest layer its losses read."""
    b = config.backbone
    return load_vgg19(b.weights, b.pooling, deepest_layer(config), b.convention)


def initial_image(config: TransferConfig, content01: Tensor, mean01: Tensor, init01: Tensor | None) -> Tensor:
    """The starting image in 0-1 units.

    content+noise (the seed): mean + r * U(-R, R) + (1 - r) * (content - mean), with the
    backbone's mean pixel, r = noise_ratio and R = noise_range / 255; "noise" is r = 1,
    "content" is r = 0; a file is used as it is.
    """
    if init01 is not None:
        return init01.clone()
    if config.init == "content":
        return content01.clone()
    ratio = 1.0 if config.init == "noise" else config.noise_ratio
    generator = torch.Generator().manual_seed(config.seed)
    noise = (torch.rand(content01.shape, generator=generator) * 2 - 1) * (config.noise_range / 255.0)
    image = mean01 + ratio * noise + (1 - ratio) * (content01 - mean01)
    return image.clamp(0, 1)


class _Steps(torch.utils.data.Dataset[int]):
    """One item per iteration: Lightning drives the loop; the data is the image itself."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class StyleTransfer(pl.LightningModule):
    def __init__(
        self,
        content01: Tensor,
        style01: Tensor,
        config: TransferConfig,
        backbone: VGGFeatures | None = None,
        init01: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.automatic_optimization = False  # one optimizer step per iteration, clamp after it
        vgg = backbone if backbone is not None else build_backbone(config)
        # Plain attribute through object.__setattr__: nn.Module would register it as a
        # submodule and its 20M weights would land in state_dict() and checkpoints.
        object.__setattr__(self, "vgg", vgg)
        mean01 = (vgg._mean / vgg.convention.scale).index_select(1, vgg._order)
        start = initial_image(config, content01, mean01, init01)
        self.image = nn.Parameter(start * config.pixel_scale)
        self.content_layers = tuple(config.layers.content)
        self.style_weights = dict(config.layers.style)
        with torch.no_grad():
            feats = vgg(content01, self.content_layers)
            grams = {n: gram(f) for n, f in vgg(style01, self.style_weights).items()}
        # Non-persistent buffers: moved with the module, never saved.
        for name, value in feats.items():
            self.register_buffer(f"content_target_{name}", value.float(), persistent=False)
        for name, value in grams.items():
            self.register_buffer(f"style_gram_{name}", value, persistent=False)
        self.register_buffer("content01", content01, persistent=False)
        self._loss_scale: float | None = None  # L-BFGS only: see _lbfgs_scale
        self.last_metrics: dict[str, float] = {}  # the losses of the last step, by metric name

    # -- the math -----------------------------------------------------------------------------
    def image01(self) -> Tensor:
        """The generated image in 0-1 units (unclamped only under L-BFGS; savers clamp)."""
        return self.image / self.config.pixel_scale

    def losses(self) -> dict[str, Tensor]:
        """All losses of the current image, keyed by their metric names."""
        image01 = self.image01()
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.config.precision == "bf16"
            else nullcontext()
        )
        with autocast:
            feats = self.vgg(image01, [*self.content_layers, *self.style_weights])
        c = self.config
        return style_transfer_losses(
            feats,
            {n: getattr(self, f"content_target_{n}") for n in self.content_layers},
            {n: getattr(self, f"style_gram_{n}") for n in self.style_weights},
            self.style_weights,
            image01,
            c.alpha,
            c.beta,
            c.gamma,
            c.tv_norm,
        )

    # -- Lightning hooks ----------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        self.vgg.to(self.device)

    def on_fit_start(self) -> None:
        self.vgg.to(self.device)  # the Trainer moves the module after setup()

    def train_dataloader(self) -> DataLoader[int]:
        return DataLoader(_Steps(self.config.iterations), batch_size=None)

    def training_step(self, batch: int, batch_idx: int) -> Tensor:
        optimizer = self.optimizers()
        result: dict[str, Tensor] = {}

        def closure() -> Tensor:
            optimizer.zero_grad()
            result.update(self.losses())
            total = float(result["loss/total"].detach())
            if not math.isfinite(total):
                # Before backward and step: the image stays the last finite one.
                raise DivergedError(self.trainer.global_step, total)
            objective = result["loss/total"]
            if self.config.optimizer.name == "lbfgs":
                objective = objective / self._lbfgs_scale(objective)
            self.manual_backward(objective)
            return objective

        lr = optimizer.param_groups[0]["lr"]
        optimizer.step(closure=closure)
        if self.config.optimizer.name != "lbfgs":
            with torch.no_grad():
                self.image.clamp_(0, self.config.pixel_scale)
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        # Exposed, not self.log()-ed: Lightning's self.log costs ~0.7 ms per key, 8.7 ms of a
        # 96 ms step at 128 px (measured); the caller's callback hands these to its logger.
        self.last_metrics = {k: float(v.detach()) for k, v in result.items()} | {"lr": lr}
        return result["loss/total"]

    def _lbfgs_scale(self, total: Tensor) -> float:
        """Mean |dJ/dx| at the first step. torch's L-BFGS takes a first step of 1/|g|_1 and
        accepts curvature pairs only when y's > 1e-10, both absolute: with the seed's loss
        (~1e12) it overshoots to inf on step 2, and with a loss near 1 it never moves
        (measured at 128 px). Dividing J by this makes the gradient ~1 per pixel."""
        if self._loss_scale is None:
            (grad,) = torch.autograd.grad(total, self.image, retain_graph=True)
            self._loss_scale = float(grad.abs().mean()) or 1.0
        return self._loss_scale

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["nst_loss_scale"] = self._loss_scale  # part of L-BFGS' objective: resume needs it

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._loss_scale = checkpoint.get("nst_loss_scale")

    def configure_optimizers(self):  # type: ignore[no-untyped-def]  # Lightning's union type
        o = self.config.optimizer
        params = [self.image]
        if o.name == "adam":
            optimizer: torch.optim.Optimizer = torch.optim.Adam(params, lr=o.lr)
        elif o.name == "sgd":
            optimizer = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum)
        else:
            # No early stop (tolerances 0): a run lasts exactly `iterations` steps.
            optimizer = torch.optim.LBFGS(
                params, lr=o.lr, max_iter=1, history_size=100, tolerance_grad=0.0, tolerance_change=0.0
            )
        if o.schedule == "constant":
            return optimizer
        if o.schedule == "cosine":
            scheduler: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=self.config.iterations
            )
        else:
            scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=o.gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
