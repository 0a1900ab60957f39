"""Verdicts on claims an experiment declares, with criteria fixed here before any result.

The criteria come from the wording of the seed's *Challenges* slide and were written down
before the sweep's numbers were looked at; no threshold is tuned per learning rate.

- `barely_changes` ("we are not able to see much change in the generated image even after
  2000 iterations"): at the claim's step (default 2000) the pixels moved on average at most
  5% of the 0-255 range from the initial image: mean abs(x_t − x_0) <= 12.75.
- `good` ("good images"): the style was taken on, J_style(final) <= 0.1 * J_style(0) (down by
  an order of magnitude), and the content's layout kept: the coarse edge correlation with
  the content photo (Sobel magnitudes at 1/4 scale) is >= 0.5.
- `loses_content` ("we are losing the content"): that same coarse edge correlation is < 0.5.
  One threshold separates kept from lost, so the two claims cannot both be read generously.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt

from pipelines.config.coerce import build

MOVE_MAX = 0.05 * 255  # "not much change": 5% of the pixel range on average
STYLE_DROP = 0.1  # "took the style": J_style fell by an order of magnitude
EDGE_KEPT = 0.5  # coarse edge correlation with the content: kept at >= 0.5, lost below


@dataclass(frozen=True)
class Measures:
    """What a verdict reads for one run (all from the store's metrics and images)."""

    move: float  # mean |x_t - x_0| at the claim's step, 0-255 units
    step: int  # the step `move` was measured at
    style_ratio: float  # J_style(last) / J_style(0)
    edges: float  # coarse edge correlation of the final image with the content


@dataclass(frozen=True)
class Verdict:
    claim: str
    run: str
    criterion: str
    measured: str
    passed: bool

    @property
    def label(self) -> str:
        return "PASS" if self.passed else "FAIL"


Kind = Literal["barely_changes", "good", "loses_content"]
CLAIMS = get_args(Kind)


class Claim(BaseModel):
    """One `claims:` entry of an experiment file."""

    model_config = ConfigDict(extra="forbid")

    claim: Kind = Field(description="the verdict asked for; the criteria above say how each is judged")
    run: dict[str, Any] = Field(default_factory=dict,
                                description="the run it is about, by its varied values, e.g. {optimizer.lr: 0.01}")
    step: NonNegativeInt = Field(2000, description="the step barely_changes measures the change at")


def judge(kind: str, run: str, m: Measures) -> Verdict:
    """The verdict on claim `kind` for run `run` from its measures."""
    if kind == "barely_changes":
        return Verdict(
            kind, run,
            f"mean abs(x_{m.step} − x_0) <= {MOVE_MAX:.2f} (5% of 0–255)",
            f"mean abs(x_{m.step} − x_0) = {m.move:.2f}",
            m.move <= MOVE_MAX,
        )
    if kind == "good":
        return Verdict(
            kind, run,
            f"J_style(final)/J_style(0) <= {STYLE_DROP} and coarse edge correlation with content >= {EDGE_KEPT}",
            f"J_style ratio = {m.style_ratio:.3g}, edge correlation = {m.edges:.3f}",
            m.style_ratio <= STYLE_DROP and m.edges >= EDGE_KEPT,
        )
    if kind == "loses_content":
        return Verdict(
            kind, run,
            f"coarse edge correlation with content < {EDGE_KEPT}",
            f"edge correlation = {m.edges:.3f}",
            m.edges < EDGE_KEPT,
        )
    raise ValueError(f"unknown claim {kind!r}; claims are {', '.join(CLAIMS)}")


def select(claim: Mapping[str, object]) -> tuple[str, dict[str, str], int]:
    """(kind, the run's varied values as strings, step) of one `claims:` entry of a YAML file; a
    ConfigError names what is wrong with it."""
    entry: Claim = build(Claim, claim)
    return entry.claim, {str(k): str(v) for k, v in entry.run.items()}, entry.step
