"""experiments/schema.json, what an editor checks experiment files with as they are typed
(pipelines/config/schema.py): it is the one the code makes, every shipped file names it and passes it,
it flags a mistyped key where it is, and it accepts what nst accepts beyond the dataclasses' types."""

import json
from pathlib import Path

import pytest
import yaml

from pipelines.config.grid import load_experiment
from pipelines.config.schema import MODELINE, SCHEMA_FILE, schema_text
from pipelines.errors import UserError

jsonschema = pytest.importorskip("jsonschema", reason="a dev dependency: pip install '.[dev]' (make test installs it)")
pytestmark = pytest.mark.cpu_only("no transfer: a file's keys mean the same on any device")

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
IMAGES = EXPERIMENTS / "images"


@pytest.fixture(scope="module")
def validator():
    return jsonschema.Draft202012Validator(json.loads((EXPERIMENTS / SCHEMA_FILE).read_text()))


def test_the_committed_schema_is_the_one_the_code_makes() -> None:
    assert (EXPERIMENTS / SCHEMA_FILE).read_text() == schema_text(), "stale: run make schema"


def test_every_shipped_experiment_names_the_schema_and_passes_it(validator) -> None:
    for path in sorted(EXPERIMENTS.glob("*.yaml")):
        text = path.read_text()
        assert text.splitlines()[0] == MODELINE, path.name
        assert [e.message for e in validator.iter_errors(yaml.safe_load(text))] == [], path.name


def test_a_mistyped_key_is_flagged_where_it_is_as_nst_refuses_it(validator, tmp_path) -> None:
    good = {"name": "typo", "base": {"content": str(IMAGES / "grace_hopper.jpg"),
                                     "style": str(IMAGES / "starry_night.jpg"), "size": 32},
            "grid": {"optimizer.lr": [0.1, 1.0]}}
    typos = {("base",): {"base": {**good["base"], "sizee": 3}},
             ("base", "optimizer"): {"base": {**good["base"], "optimizer": {"lrr": 1}}},
             ("grid",): {"grid": {"optimizer.lrr": [0.1, 1.0]}},
             (): {"seedz": [1]}}
    for where, typo in typos.items():
        data = good | typo
        assert [tuple(e.absolute_path) for e in validator.iter_errors(data)] == [where], where
        path = tmp_path / "typo.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(UserError, match=r"unknown key|did you mean"):
            load_experiment(path)


def test_a_settings_choices_are_offered_and_others_flagged(validator) -> None:
    run = json.loads((EXPERIMENTS / SCHEMA_FILE).read_text())["$defs"]["OptimizerConfig"]["properties"]
    assert run["name"]["enum"] == ["adam", "lbfgs", "sgd"]  # an editor completes them
    data = {"name": "t", "base": {"optimizer": {"name": "adamw"}}}
    assert [tuple(e.absolute_path) for e in validator.iter_errors(data)] == [("base", "optimizer", "name")]


def test_what_nst_accepts_beyond_the_types_passes_too(validator, tmp_path) -> None:
    # A list of layers for a map of weights (equal weights), one value for a list, a layer's weight as a grid key.
    data = {"name": "loose", "base": {"content": str(IMAGES / "grace_hopper.jpg"),
                                      "style": str(IMAGES / "starry_night.jpg"), "size": 32, "snapshots": 0,
                                      "layers": {"style": ["relu1_1", "relu2_1"]}},
            "grid": {"layers.style.relu1_1": [0.1, 1.0]}}
    assert [e.message for e in validator.iter_errors(data)] == []
    path = tmp_path / "loose.yaml"
    path.write_text(yaml.safe_dump(data))
    assert len(load_experiment(path).points) == 2
