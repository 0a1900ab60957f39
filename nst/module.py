"""StyleTransfer: Gatys et al. (2016) as a LightningModule whose only parameter is the image.

The generated image is an `nn.Parameter` of shape (B, 3, H, W), RGB, in units of `pixel_scale`
(255 by default, the seed's scale): one image per run, B = 1 for a single run, B > 1 for a batch
of a sweep's runs that share the content, style, size, layers and optimizer (nst.config:
PER_SAMPLE says what may differ). The VGG runs once per step for the whole batch; every loss,
learning rate and stop decision stays per image, so an image in a batch gets the update it would
get alone. The frozen VGG-19 is held outside the module's registry, so it is never in
`state_dict()`, a checkpoint or `parameters()`, and moves with the module all the same.

Nothing waits for the device during a step: the losses of the last step are device tensors in
`last_losses` (one value per image) for callbacks to collect, and an image that diverges or
converges is masked on the device (nst.stopping: `stops.moving`, its step and reason beside it).
With `cuda_graph=True` on a CUDA device, the losses and the gradient are replayed from one captured
CUDA graph (nst.graphs says when and why); `last_losses` are then the capture's own tensors, which
the next step overwrites, so a callback copies what it keeps.

Deviations from Gatys et al., on purpose:
- Adam and SGD: pixels are projected back into the valid range [0, pixel_scale] after
  every step (a clamp), so a saved image shows exactly what the losses saw.
- L-BFGS runs one iteration per training step, without line search (as jcjohnson's
  neural-style), so an "iteration" means one step of any optimizer and every step is
  logged. It minimizes J divided by its mean gradient at step 0 (logged losses stay J),
  since torch's L-BFGS has absolute thresholds that fail at the seed's loss scale. It is
  not clamped in the loop: a projection would corrupt its curvature pairs (measured: it
  stalls); its images are clamped when read out. It runs one image at a time (nst.optim).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import pytorch_lightning as pl
import torch
from pytorch_lightning.core.optimizer import LightningOptimizer
from torch import Tensor, nn
from torch.utils.data import DataLoader

from nst import averaging, checkpoints, color
from nst.config import TransferConfig, batch_of, blend_weights
from nst.graphs import CapturedStep, why_not_captured
from nst.losses import W2Target, Weight, style_transfer_losses
from nst.optim import SampleSchedules, make_optimizer
from nst.precision import bf16_twin, resolve_precision
from nst.scales import resize
from nst.sizes import pyramid
from nst.stopping import Stops
from nst.targets import build_backbone, initial_image, scale_targets
from nst.vgg import VGGFeatures


class _Steps(torch.utils.data.Dataset[int]):
    """One item per iteration: Lightning drives the loop; the data is the image itself."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class StyleTransfer(pl.LightningModule):
    # What nn.Module's attribute lookup returns, typed: the unregistered VGG and its bf16 twin, the buffers.
    vgg: VGGFeatures
    _vgg_bf16: VGGFeatures | None
    content_full: Tensor
    content01: Tensor
    chroma01: Tensor
    average_image: Tensor
    average_weight: Tensor

    def __init__(
        self,
        content01: Tensor,
        style01: Tensor | Sequence[Tensor],
        config: TransferConfig | Sequence[TransferConfig],
        backbone: VGGFeatures | None = None,
        init01: Tensor | Sequence[Tensor | None] | None = None,
        cuda_graph: bool = False,
    ) -> None:
        super().__init__()
        # On a CUDA device, each step's losses and gradient replayed from one captured graph (nst.graphs);
        # elsewhere, and for what cannot be captured, the step runs op by op.
        self.cuda_graph = cuda_graph
        self._captured: CapturedStep[tuple[dict[str, Tensor], Tensor]] | None = None
        self.configs = batch_of([config] if isinstance(config, TransferConfig) else config)
        self.config = self.configs[0]  # the shared settings (and the whole config of a single run)
        self.automatic_optimization = False  # one optimizer step per iteration, clamp after it
        vgg = (backbone if backbone is not None else build_backbone(self.config)).to(content01.device)
        # Plain attribute through object.__setattr__: nn.Module would register it as a
        # submodule and its 20M weights would land in state_dict() and checkpoints.
        # `_apply` below still takes it wherever the module goes.
        object.__setattr__(self, "vgg", vgg)
        object.__setattr__(self, "_vgg_bf16", None)  # its bf16 twin, made at the first bf16 step
        styles = [style01] if isinstance(style01, Tensor) else list(style01)
        self.blend = blend_weights(self.config.style_blend, len(styles))
        # Colour control changes what the losses see; the content's own colours come back at read-out.
        if self.config.preserve_color == "match":
            styles = [color.match_color(s, content01) for s in styles]
        elif self.config.preserve_color == "luminance":
            styles = [color.match_luminance(s, content01) for s in styles]
            self.register_buffer("chroma01", content01, persistent=False)
            content01 = color.grey(content01)
        self.register_buffer("content_full", content01, persistent=False)
        for i, style in enumerate(styles):
            self.register_buffer(f"style_full_{i}", style, persistent=False)
        self.n_styles = len(styles)
        self.sizes = pyramid(self.config.scales, max(content01.shape[-2:]))
        self.content_layers = tuple(self.config.layers.content)
        self.style_layers = tuple(self.config.layers.style)
        self.scale_index = 0
        self._set_targets(0)
        self._targets_stale = False  # the targets are those of `scale_index`
        # Per-image weights: a plain number when the batch agrees (the single-run case), else (B,).
        self.alpha = self._weight("alpha", [c.alpha for c in self.configs])
        self.beta = self._weight("beta", [c.beta for c in self.configs])
        self.gamma = self._weight("gamma", [c.gamma for c in self.configs])
        self.style_weights = {n: self._weight(f"style_weight_{n}", [c.layers.style[n] for c in self.configs])
                              for n in self.style_layers}
        self.image = nn.Parameter(self._start(init01))
        self._init_average()
        self.schedules = SampleSchedules([c.optimizer for c in self.configs], self.config.iterations)
        self.last_lrs = self.schedules.lrs  # the learning rates of the last step, per image
        self.last_losses: dict[str, Tensor] = {}  # the losses of the last step, per image, on the device
        self._loss_scale: float | None = None  # L-BFGS only: see _lbfgs_scale
        self.stops = Stops(self.configs, self.content_full.device)

    @property
    def batch_size(self) -> int:
        return len(self.configs)

    @property
    def total_steps(self) -> int:
        return self.config.iterations * len(self.sizes)

    def scale_of_step(self, step: int) -> int:
        """Index into `sizes` of the scale that optimizer step `step` runs at."""
        return min(step // self.config.iterations, len(self.sizes) - 1)

    def _weight(self, name: str, values: list[float]) -> Weight:
        if len(set(values)) == 1:
            return values[0]
        self.register_buffer(name, torch.tensor(values, device=self.content_full.device), persistent=False)
        return getattr(self, name)

    def _start(self, init01: Tensor | Sequence[Tensor | None] | None) -> Tensor:
        """Each image's start (its own seed, init and noise), in pixel units."""
        inits = list(init01) if isinstance(init01, Sequence) else [init01] * self.batch_size
        vgg = self.vgg
        # On the CPU: a GPU divides by a number as a multiply by its reciprocal (1 ulp apart, seen
        # on an H100), and the same seed must start from the same bits on any device.
        mean01 = (vgg._mean.cpu() / vgg.convention.scale).index_select(1, vgg._order.cpu())
        hw = tuple(self.content01.shape[-2:])
        starts = [initial_image(c, self.content01, mean01, None if i is None else resize(i, hw))
                  for c, i in zip(self.configs, inits, strict=True)]
        return torch.cat(starts) * self.config.pixel_scale

    def _set_targets(self, index: int) -> None:
        """Content features and blended style Grams at scale `index` (buffers, never saved)."""
        styles = [getattr(self, f"style_full_{i}") for i in range(self.n_styles)]
        targets = scale_targets(self.vgg, self.content_full, styles, self.blend, self.sizes[index],
                                self.content_layers, list(self.config.layers.style), self.config.style_loss)
        for name, value in targets.features.items():
            self.register_buffer(f"content_target_{name}", value, persistent=False)
        for name, value in targets.grams.items():
            self.register_buffer(f"style_gram_{name}", value, persistent=False)
        for name, w2 in targets.w2.items():
            for part, value in w2._asdict().items():
                self.register_buffer(f"style_w2_{part}_{name}", value, persistent=False)
        self.register_buffer("content01", targets.content01, persistent=False)
        self.scale_index = index

    def _enter_scale(self, index: int) -> None:
        """Next scale: new targets, the images upsampled to the new size (in pixel units)."""
        self._set_targets(index)
        with torch.no_grad():
            image01 = resize(self.written01().clamp(0, 1), tuple(self.content01.shape[-2:]))
        self.image = nn.Parameter(image01 * self.config.pixel_scale)
        self._captured = None  # a new image and new targets: captured again
        self._init_average()  # each scale averages its own iterates, from the upsampled image on
        self.stops.seen = 0  # each scale starts with a jump in J: convergence counts from here

    def result01(self) -> Tensor:
        """The images to look at, in 0-1 units: clamped, and under `preserve_color: luminance`
        the optimized luminance with the content's chroma."""
        image01 = self.written01().detach().clamp(0, 1)
        if self.config.preserve_color == "luminance":
            chroma = resize(self.chroma01, tuple(image01.shape[-2:]))
            return color.with_chroma(image01, chroma)
        return image01

    def _apply(self, fn, recurse=True):  # nn.Module's own signature
        """`.to()`, `.cuda()`, `.cpu()` all come here: the unregistered VGG moves with the module
        (Lightning moves it to the GPU before fit and back to the CPU after)."""
        super()._apply(fn, recurse)
        self.vgg._apply(fn, recurse)
        self._captured = None  # the graph read the tensors where they were
        object.__setattr__(self, "_vgg_bf16", None)  # cast again from the moved VGG when next needed
        return self

    # -- the math -----------------------------------------------------------------------------
    def image01(self) -> Tensor:
        """The generated images in 0-1 units (unclamped only under L-BFGS; savers clamp)."""
        return self.image / self.config.pixel_scale

    def losses(self) -> dict[str, Tensor]:
        """All losses of the current images, keyed by their metric names, one value per image."""
        image01 = self.image01()
        layers = [*self.content_layers, *self.style_layers]
        if resolve_precision(self.config.precision, self.image.device.type) == "bf16":
            # No cast cache: it would hold nothing (the weights are bf16 already, _bf16_vgg); off, a
            # step can be captured in a CUDA graph.
            with torch.autocast(self.image.device.type, dtype=torch.bfloat16, cache_enabled=False):
                feats = self._bf16_vgg()(image01, layers)
        else:
            feats = self.vgg(image01, layers)
        c = self.config
        return style_transfer_losses(
            feats,
            {n: getattr(self, f"content_target_{n}") for n in self.content_layers},
            {n: self._style_target(n) for n in self.style_layers},
            self.style_weights,
            image01,
            self.alpha,
            self.beta,
            self.gamma,
            c.tv_norm,
            c.gram_norm,
        )

    def _bf16_vgg(self) -> VGGFeatures:
        """The VGG a bf16 step runs (nst.precision.bf16_twin), made at the first bf16 step."""
        twin = self._vgg_bf16
        if twin is None:
            twin = bf16_twin(self.vgg)
            object.__setattr__(self, "_vgg_bf16", twin)  # not a submodule: never saved, dropped on a move
        return twin

    def _style_target(self, layer: str) -> Tensor | W2Target:
        if self.config.style_loss == "w2":
            return W2Target(*(getattr(self, f"style_w2_{part}_{layer}") for part in W2Target._fields))
        return getattr(self, f"style_gram_{layer}")

    # -- iterate averaging (nst.averaging) ------------------------------------------------------
    def _init_average(self) -> None:
        if self.config.average:
            self.register_buffer("average_image", torch.zeros_like(self.image.detach()))
            self.register_buffer("average_weight", torch.zeros(self.batch_size, device=self.image.device))

    def _update_average(self, keep: Tensor) -> None:
        if self.config.average:
            averaging.update(self.average_image, self.average_weight, self.image.detach(), keep, self.config.average)

    def written01(self) -> Tensor:
        """The images as written out, in 0-1 units: the iterates, or their average under `average`."""
        if not self.config.average:
            return self.image01()
        averaged = averaging.averaged(self.average_image, self.average_weight, self.image.detach())
        return averaged / self.config.pixel_scale

    # -- Lightning hooks ----------------------------------------------------------------------
    def on_fit_start(self) -> None:
        if self._targets_stale:  # resumed at a later scale of the pyramid (on_load_checkpoint)
            self._set_targets(self.scale_index)
            self._targets_stale = False

    def train_dataloader(self) -> DataLoader[int]:
        return DataLoader(_Steps(self.total_steps), batch_size=None)

    def on_train_batch_start(self, batch: int, batch_idx: int) -> None:
        # Here, not in training_step: Lightning hooks its step counter into the optimizers just
        # before training_step, so a new optimizer must be in place by then.
        index = self.scale_of_step(self.trainer.global_step)
        if index != self.scale_index:
            self._enter_scale(index)
            self._new_optimizer()

    def _losses_and_gradient(self) -> tuple[dict[str, Tensor], Tensor]:
        """The losses of the current images and the gradient of their objective in `image.grad`."""
        result = self.losses()
        # Images that stopped contribute nothing; each image's gradient is its own J's.
        objective = torch.where(self.stops.moving, result["loss/total"], 0.0).sum()
        if self.config.optimizer.name == "lbfgs":
            objective = objective / self._lbfgs_scale(objective)
        self.manual_backward(objective)
        return result, objective

    def _step_graph(self) -> CapturedStep[tuple[dict[str, Tensor], Tensor]] | None:
        """The captured losses and gradient when this step runs from a CUDA graph (captured at its first use)."""
        c = self.config
        if not self.cuda_graph or why_not_captured(self.image.device, c.optimizer.name, c.style_loss):
            return None
        if self._captured is None:
            self._captured = CapturedStep(self._losses_and_gradient, self.image)
        return self._captured

    def training_step(self, batch: int, batch_idx: int) -> None:
        step = self.trainer.global_step
        optimizer = cast(LightningOptimizer, self.optimizers())  # the one optimizer configure_optimizers gives
        lbfgs = self.config.optimizer.name == "lbfgs"
        self.last_lrs = lrs = self.schedules.lrs
        group = optimizer.optimizer.param_groups[0]
        group["lr" if lbfgs else "lrs"] = lrs[0] if lbfgs else lrs
        before = self.image.detach().clone()  # what a stopped or diverged image goes back to
        result: dict[str, Tensor] = {}
        graph = self._step_graph()

        def closure() -> Tensor:
            if graph is not None:  # the replay overwrites the gradient: no zero_grad
                losses, objective = graph()
            else:
                optimizer.zero_grad()
                losses, objective = self._losses_and_gradient()
            result.update(losses)
            return objective

        optimizer.step(closure=closure)
        with torch.no_grad():
            total = result["loss/total"].detach()
            keep = self.stops.diverge(step, total)
            if not lbfgs:
                self.image.clamp_(0, self.config.pixel_scale)
            torch.where(keep.view(-1, 1, 1, 1), self.image, before, out=self.image)  # in place: a kernel less
            self._update_average(keep)
            self.last_losses = {k: v.detach() for k, v in result.items()}
            if self.scale_index == len(self.sizes) - 1:  # each scale starts with a jump in J: the last one only
                self.stops.converge(step, total)
        self.schedules.step()

    def on_train_end(self) -> None:
        self._captured = None  # its memory pool is the GPU's again

    def _new_optimizer(self) -> None:
        """A fresh optimizer and schedules over the new, larger image parameter."""
        from pytorch_lightning.core.optimizer import _init_optimizers_and_lr_schedulers

        optimizers, schedulers = _init_optimizers_and_lr_schedulers(self)
        self.trainer.strategy.optimizers = optimizers
        self.trainer.strategy.lr_scheduler_configs = schedulers
        self.schedules = SampleSchedules([c.optimizer for c in self.configs], self.config.iterations)

    def _lbfgs_scale(self, total: Tensor) -> float:
        """Mean |dJ/dx| at the first step. torch's L-BFGS takes a first step of 1/|g|_1 and
        accepts curvature pairs only when y's > 1e-10, both absolute: with the seed's loss
        (~1e12) it overshoots to inf on step 2, and with a loss near 1 it never moves
        (measured at 128 px). Dividing J by this makes the gradient ~1 per pixel."""
        if self._loss_scale is None:
            (grad,) = torch.autograd.grad(total, self.image, retain_graph=True)
            self._loss_scale = float(grad.abs().mean()) or 1.0
        return self._loss_scale

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["nst"] = {
            "loss_scale": self._loss_scale,  # part of L-BFGS' objective: resume needs it
            "scale_index": self.scale_index,
            "seen": self.stops.seen,
            checkpoints.SAMPLES: [sample | {"schedule": schedule} for sample, schedule
                                  in zip(self.stops.samples(), self.schedules.state_dicts(), strict=True)],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Called before the weights load and the optimizers are made, and before Lightning moves
        # the module to its device: the image only takes the checkpoint's scale's shape here (the
        # checkpoint fills it); that scale's targets are computed at fit start, on the device, as an
        # uninterrupted run computed them (on the CPU they would differ in the last bits).
        state = checkpoint["nst"]
        self._loss_scale = state["loss_scale"]
        if state["scale_index"] != self.scale_index:
            self.scale_index = state["scale_index"]
            self.image = nn.Parameter(torch.empty_like(checkpoint["state_dict"]["image"], device=self.image.device))
            self._captured = None
            self._init_average()  # shaped like the new image; the checkpoint fills it
            self._targets_stale = True
        self.stops.seen = state["seen"]
        samples = state[checkpoints.SAMPLES]
        if len(samples) != self.batch_size:
            raise ValueError(f"the checkpoint holds {len(samples)} images; this batch has {self.batch_size}")
        self.stops.load(samples)
        self.schedules.load_state_dicts(s["schedule"] for s in samples)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return make_optimizer([c.optimizer for c in self.configs], self.image)
