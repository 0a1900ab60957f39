"""Named recipes: a preset is a set of run keys applied under what the user writes.

- `seed`: the slides' formulation (nst.config's defaults): Caffe VGG-19, content relu4_2, style
  relu1_1 ... relu5_1 at 0.2, alpha 10, beta 40, the seed's normalizations, content+noise, Adam at
  lr 0.1 in 0-255 pixel units. The seed's experiments pin it, so their runs and verdicts stay.
- `default`: the recipe `nst run` and experiment files without a `preset:` use, chosen by measurement
  on three photo × painting pairs at 512 px (experiments/recipes.yaml; the report,
  docs/recipes/README.md, says why each key has the value it has). `nst lr-find` probes Adam's lr on
  the seed's formulation (the default's L-BFGS has no lr to tune).

A user's keys win over the preset's; a nested setting (optimizer, layers, stop, backbone) is
overlaid key by key, so `--set optimizer.lr=2` keeps the preset's optimizer otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "seed": {},
    # Measured against the seed and four other recipes on three pairs at 512 px in about the same time
    # per image (docs/recipes/README.md): the only one better than the seed on both SSIM to the photo and
    # distance to the painting's style, on every pair, and the fastest.
    "default": {
        "size": 512,
        "iterations": 170,
        "init": "content",  # from the photo: no noise to remove (the seed's start costs most of its steps)
        "beta": 4e-2,  # the seed's 40 is ~1e3 times more style than a face survives at 512 px
        "optimizer": {"name": "lbfgs", "lr": 1.0},  # curvature: the most per step (jcjohnson/neural-style's)
        "snapshots": [0, 50, 100, 150],
    },
}
DEFAULT = "default"  # what the command line and experiment files get
LIBRARY = "seed"  # what `run_config` gets when nobody names one: nst.config's defaults


def with_preset(data: Mapping[str, Any], default: str = LIBRARY) -> dict[str, Any]:
    """`data` over its preset's keys (data["preset"], else `default`), with the preset's name in it."""
    name = data.get("preset", default)
    if not isinstance(name, str) or name not in PRESETS:
        from pipelines.config.coerce import ConfigError

        raise ConfigError(f"preset: expected one of {', '.join(PRESETS)}, got {name!r}")
    out: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in PRESETS[name].items()}
    for key, value in data.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **value}  # a nested setting: the user's keys over the preset's
        else:
            out[key] = value
    out["preset"] = name
    return out
