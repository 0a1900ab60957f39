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
from collections import deque
from collections.abc import Sequence
from contextlib import nullcontext

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from nst import color
from nst.config import TransferConfig, blend_weights
from nst.losses import style_transfer_losses
from nst.optimizers import make_optimizers
from nst.precision import resolve_precision
from nst.scales import pyramid, resize
from nst.targets import build_backbone, initial_image, scale_targets
from nst.vgg import VGGFeatures


class DivergedError(RuntimeError):
    """A loss became NaN or infinite."""

    def __init__(self, step: int, value: float) -> None:
        super().__init__(f"diverged at step {step} (loss/total = {value})")
        self.step = step


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
        style01: Tensor | Sequence[Tensor],
        config: TransferConfig,
        backbone: VGGFeatures | None = None,
        init01: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.automatic_optimization = False  # one optimizer step per iteration, clamp after it
        vgg = (backbone if backbone is not None else build_backbone(config)).to(content01.device)
        # Plain attribute through object.__setattr__: nn.Module would register it as a
        # submodule and its 20M weights would land in state_dict() and checkpoints.
        # `_apply` below still takes it wherever the module goes.
        object.__setattr__(self, "vgg", vgg)
        styles = [style01] if isinstance(style01, Tensor) else list(style01)
        self.blend = blend_weights(config.style_blend, len(styles))
        # Colour control changes what the losses see; the content's own colours come back at read-out.
        if config.preserve_color == "match":
            styles = [color.match_color(s, content01) for s in styles]
        elif config.preserve_color == "luminance":
            styles = [color.match_luminance(s, content01) for s in styles]
            self.register_buffer("chroma01", content01, persistent=False)
            content01 = color.grey(content01)
        self.register_buffer("content_full", content01, persistent=False)
        for i, style in enumerate(styles):
            self.register_buffer(f"style_full_{i}", style, persistent=False)
        self.n_styles = len(styles)
        self.sizes = pyramid(config.scales, max(content01.shape[-2:]))
        self.content_layers = tuple(config.layers.content)
        self.style_weights = dict(config.layers.style)
        self.scale_index = 0
        self._set_targets(0)
        mean01 = (vgg._mean / vgg.convention.scale).index_select(1, vgg._order)
        if init01 is not None:
            init01 = resize(init01, tuple(self.content01.shape[-2:]))
        start = initial_image(config, self.content01, mean01, init01)
        self.image = nn.Parameter(start * config.pixel_scale)
        self._loss_scale: float | None = None  # L-BFGS only: see _lbfgs_scale
        self.last_metrics: dict[str, float] = {}  # the losses of the last step, by metric name
        self._history: deque[float] = deque(maxlen=config.stop.window + 1)
        self.stop_reason: str | None = None  # why the run ended before `total_steps`

    @property
    def total_steps(self) -> int:
        return self.config.iterations * len(self.sizes)

    def scale_of_step(self, step: int) -> int:
        """Index into `sizes` of the scale that optimizer step `step` runs at."""
        return min(step // self.config.iterations, len(self.sizes) - 1)

    def _set_targets(self, index: int) -> None:
        """Content features and blended style Grams at scale `index` (buffers, never saved)."""
        styles = [getattr(self, f"style_full_{i}") for i in range(self.n_styles)]
        targets = scale_targets(self.vgg, self.content_full, styles, self.blend, self.sizes[index],
                                self.content_layers, list(self.style_weights))
        for name, value in targets.features.items():
            self.register_buffer(f"content_target_{name}", value, persistent=False)
        for name, value in targets.grams.items():
            self.register_buffer(f"style_gram_{name}", value, persistent=False)
        self.register_buffer("content01", targets.content01, persistent=False)
        self.scale_index = index

    def _enter_scale(self, index: int) -> None:
        """Next scale: new targets, the image upsampled to the new size (in pixel units)."""
        self._set_targets(index)
        with torch.no_grad():
            image01 = resize(self.image01().clamp(0, 1), tuple(self.content01.shape[-2:]))
        self.image = nn.Parameter(image01 * self.config.pixel_scale)
        self._history.clear()

    def result01(self) -> Tensor:
        """The image to look at, in 0-1 units: clamped, and under `preserve_color: luminance`
        the optimized luminance with the content's chroma."""
        image01 = self.image01().detach().clamp(0, 1)
        if self.config.preserve_color == "luminance":
            chroma = resize(self.chroma01, tuple(image01.shape[-2:]))
            return color.with_chroma(image01, chroma)
        return image01

    # -- the math -----------------------------------------------------------------------------
    def image01(self) -> Tensor:
        """The generated image in 0-1 units (unclamped only under L-BFGS; savers clamp)."""
        return self.image / self.config.pixel_scale

    def losses(self) -> dict[str, Tensor]:
        """All losses of the current image, keyed by their metric names."""
        image01 = self.image01()
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if resolve_precision(self.config.precision, self.device.type) == "bf16"
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
            c.gram_norm,
        )

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]  # nn.Module's own signature
        """`.to()`, `.cuda()`, `.cpu()` all come here: the unregistered VGG moves with the module
        (Lightning moves it to the GPU before fit and back to the CPU after)."""
        super()._apply(fn, recurse)
        self.vgg._apply(fn, recurse)
        return self

    # -- Lightning hooks ----------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader[int]:
        return DataLoader(_Steps(self.total_steps), batch_size=None)

    def on_train_batch_start(self, batch: int, batch_idx: int) -> None:
        # Here, not in training_step: Lightning hooks its step counter into the optimizers just
        # before training_step, so a new optimizer must be in place by then.
        index = self.scale_of_step(self.trainer.global_step)
        if index != self.scale_index:
            self._enter_scale(index)
            self._new_optimizer()

    def training_step(self, batch: int, batch_idx: int) -> Tensor:
        step = self.trainer.global_step
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
        if len(self.sizes) > 1:
            self.last_metrics["scale"] = float(self.sizes[self.scale_index])
        self._check_convergence(step)
        return result["loss/total"]

    def _new_optimizer(self) -> None:
        """A fresh optimizer (and schedule) over the new, larger image parameter."""
        from pytorch_lightning.core.optimizer import _init_optimizers_and_lr_schedulers

        optimizers, schedulers = _init_optimizers_and_lr_schedulers(self)
        self.trainer.strategy.optimizers = optimizers
        self.trainer.strategy.lr_scheduler_configs = schedulers

    def _check_convergence(self, step: int) -> None:
        """`stop`: end the run once J fell by less than rel_improvement over `window` steps."""
        stop = self.config.stop
        if not stop.rel_improvement or self.scale_index != len(self.sizes) - 1:
            return
        self._history.append(self.last_metrics["loss/total"])
        if len(self._history) <= stop.window:
            return
        old, new = self._history[0], self._history[-1]
        gain = (old - new) / abs(old) if old else 0.0
        if gain < stop.rel_improvement:
            self.stop_reason = (f"converged at step {step}: J fell {gain:.2e} over the last {stop.window} steps "
                                f"(< rel_improvement {stop.rel_improvement:g})")
            self.trainer.should_stop = True

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
        checkpoint["nst_scale_index"] = self.scale_index
        checkpoint["nst_history"] = list(self._history)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Called before the weights load and the optimizers are made: size the image to the
        # checkpoint's scale first, so that both fit.
        self._loss_scale = checkpoint.get("nst_loss_scale")
        if checkpoint.get("nst_scale_index", 0) != self.scale_index:
            self._enter_scale(checkpoint["nst_scale_index"])
        self._history.extend(checkpoint.get("nst_history", []))

    def configure_optimizers(self):  # type: ignore[no-untyped-def]  # Lightning's union type
        return make_optimizers(self.config.optimizer, self.image, self.config.iterations)
