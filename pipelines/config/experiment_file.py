"""The keys of an experiment file, and what each may hold, as one pydantic model: it validates a file's
top level (pipelines.config.grid) and gives experiments/schema.json its sections and their
descriptions (pipelines.config.schema). One run's keys, under `base`, are RunConfig's."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from pipelines.config.claims import Claim

#: Above this many runs a sweep asks to be confirmed (--yes), unless the file's `max_runs` allows them.
MAX_RUNS = 1000

_Values = Annotated[list[Any], Field(min_length=1)]  # a grid's or zip's values for one key


class ExperimentFile(BaseModel):
    """A sweep: a base run, what varies, and what the report judges (nst experiment FILE)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, title="nst experiment file")

    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)] = Field(
        description="the MLflow experiment's name, e.g. name: lr_sweep")
    description: str = Field("", description="shown on the parent run")
    base: dict[str, Any] = Field(
        default_factory=dict, description="one run's keys: any key `nst run --set` accepts (content, style, size, ...)")
    grid: dict[str, _Values] = Field(
        default_factory=dict, description="the cartesian product over dotted keys, e.g. optimizer.lr: [0.01, 0.1]")
    zip: dict[str, _Values] = Field(default_factory=dict, description="equal-length lists varied together")
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="named sets of overrides, one run each (combined with the grid), "
                                          "e.g. luminance: {preserve_color: luminance}; {} for none")
    seeds: Annotated[list[NonNegativeInt], Field(min_length=1)] = Field(
        [0], description="repeats of every grid point, e.g. seeds: [0, 1]")
    claims: list[Claim] = Field(
        default_factory=list, description="judged by `nst report`: {claim: ..., run: {...}, step: ...} entries")
    contrast: str | None = Field(None, description="another sweep the report judges the same claims on")
    notes: str | None = Field(None, description="markdown appended to the report")
    max_runs: PositiveInt = Field(MAX_RUNS, description="more runs than this ask for --yes")

    @field_validator("description", "base", "grid", "zip", "variants", "claims", mode="before")
    @classmethod
    def _empty(cls, value: Any, info: ValidationInfo) -> Any:
        """A key written with nothing under it (`grid:`) is YAML's null: the same as leaving it out."""
        if value is None and info.field_name is not None:
            return cls.model_fields[info.field_name].get_default(call_default_factory=True)
        return value


#: The keys an experiment file may have, in the order the schema lists them.
TOP_LEVEL_KEYS = tuple(ExperimentFile.model_fields)
