"""A batch's inputs, checked before any MLflow run exists: the device, the content and style
images at their sizes, and a start image from a file or from another run's final image. Everything
a user can get wrong here becomes one UserError line, so bad input leaves nothing in the store."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mlflow import MlflowClient

from nst.images import MIN_SIDE, ImageError, load_image, save_image
from pipelines.config.runs import RunConfig
from pipelines.errors import UserError


@dataclass
class Inputs:
    """What a batch's runs share: the content and style images, sized as their config says."""

    content: torch.Tensor
    styles: list[torch.Tensor]
    folder: Path | None = None  # where `write` put them as PNG, once for all the batch's runs

    @property
    def size(self) -> tuple[int, int]:
        return self.content.shape[-1], self.content.shape[-2]

    def write(self, folder: Path) -> None:
        """content.png, style.png (style_2.png ... for a blend), which each run logs as artifacts."""
        save_image(self.content, folder / "content.png")
        for i, style in enumerate(self.styles):
            save_image(style, folder / ("style.png" if i == 0 else f"style_{i + 1}.png"))
        self.folder = folder


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA GPU is visible; use --set device=cpu or auto")
    return device


def load_inputs(config: RunConfig) -> Inputs:
    """The content and style(s), sized as the config says."""
    try:
        content = load_image(config.content, config.size)
        height, width = content.shape[-2:]
        smallest = round(min(height, width) * config.sizes[0] / max(height, width))
        if smallest < MIN_SIDE:
            raise UserError(f"scales: at {config.sizes[0]} px the content is {smallest} px on its short side; "
                            f"VGG-19 needs at least {MIN_SIDE}: start the pyramid at a larger size")
        if config.style_scale is None:
            styles = [load_image(s, (width, height)) for s in config.styles]
        else:
            styles = [load_image(s, round(config.size * config.style_scale)) for s in config.styles]
    except ImageError as exc:
        raise UserError(str(exc)) from None
    return Inputs(content, styles)


def load_init(config: RunConfig, size: tuple[int, int], client: MlflowClient | None = None) -> torch.Tensor | None:
    """The run's start image when it starts from a file or another run's final image, else None."""
    try:
        if config.init.startswith("run:"):
            return _final_image_of(client, config.init.removeprefix("run:"), size)
        if config.init_from_file:
            return load_image(config.init, size)
    except ImageError as exc:
        raise UserError(str(exc)) from None
    return None


def check_inputs(configs: list[RunConfig], client: MlflowClient | None = None) -> None:
    """Every image these runs read loads at its size (UserError naming the first that does not):
    a sweep checks all its points before it creates anything. Each distinct input is read once."""
    sizes: dict[tuple[Any, ...], tuple[int, int]] = {}
    inits: set[tuple[str, tuple[int, int]]] = set()
    for config in configs:
        shared = (config.content, config.styles, config.size, config.style_scale, tuple(config.sizes))
        if shared not in sizes:
            sizes[shared] = load_inputs(config).size
        if (config.init_from_file or config.init.startswith("run:")) and (config.init, sizes[shared]) not in inits:
            inits.add((config.init, sizes[shared]))
            load_init(config, sizes[shared], client)


def _final_image_of(client: MlflowClient | None, run_id: str, size: tuple[int, int]) -> torch.Tensor:
    """`init: run:<id>`: that run's final image, from the store, resized to this run's size."""
    if client is None:
        raise UserError("init: run:<id> needs a tracking store to read the run from")
    try:
        client.get_run(run_id)
    except Exception:  # noqa: BLE001 - MLflow raises several types for a bad id
        raise UserError(f"init: run {run_id} is not in the store; copy a run id from the UI or `nst run`'s "
                        "output (same --tracking-uri)") from None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, "final.png", tmp)
        except Exception:  # noqa: BLE001
            raise UserError(f"init: run {run_id} has no final.png (it did not finish); "
                            "start from a FINISHED run") from None
        return load_image(path, size)
