"""RunConfig: coercion, validation messages, --set parsing, flattening, run keys."""

import re

import pytest

from pipelines.config.coerce import ConfigError
from pipelines.config.run_key import run_key
from pipelines.config.runs import flatten, run_config, to_dict
from pipelines.config.yaml_files import merge, parse_set

BASE = {"content": "a.jpg", "style": "b.jpg"}


def test_defaults_are_the_seed_formulation() -> None:
    config = run_config(BASE)
    assert (config.alpha, config.beta, config.optimizer.name, config.init) == (10.0, 40.0, "adam", "content+noise")
    assert config.layers.content == ("relu4_2",)
    assert config.layers.style == {f"relu{i}_1": 0.2 for i in range(1, 6)}
    assert config.noise_ratio == 0.6 and config.pixel_scale == 255.0


def test_set_values_parse_as_yaml() -> None:
    assert parse_set("optimizer.lr=0.1") == ("optimizer.lr", 0.1)
    assert parse_set("layers.content=[relu4_2, relu5_2]") == ("layers.content", ["relu4_2", "relu5_2"])
    assert parse_set("init=content") == ("init", "content")
    config = run_config(merge(BASE, dict([parse_set("optimizer.lr=1e-3"), parse_set("size=64")])))
    assert config.optimizer.lr == 0.001 and config.size == 64
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_set("optimizer.lr")


def test_style_layers_as_a_list_get_equal_weights() -> None:
    config = run_config({**BASE, "layers": {"style": ["relu1_1", "relu2_1"]}})
    assert config.layers.style == {"relu1_1": 0.5, "relu2_1": 0.5}


def test_one_value_stands_for_a_list_unless_the_key_takes_one_value() -> None:
    assert run_config({**BASE, "snapshots": 5, "scales": 128, "size": 256}).snapshots == (5,)
    assert run_config({**BASE, "scales": 128, "size": 256}).scales == (128,)
    assert run_config({**BASE, "scales": "auto"}).scales == "auto"
    assert run_config({**BASE, "style": "b.jpg"}).style == "b.jpg"
    assert run_config({**BASE, "optimizer": {"lr": "1e-3"}}).optimizer.lr == 1e-3  # YAML 1.1 reads 1e-3 as text


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"optimizer": {"lrr": 0.1}}, "unknown key 'optimizer.lrr'; did you mean 'optimizer.lr'"),
        ({"iteratons": 5}, "did you mean 'iterations'"),
        ({"optimizer": {"lr": "fast"}},
         "optimizer.lr: input should be a valid number, unable to parse string as a number, got 'fast'"),
        ({"optimizer": {"lr": -0.1}}, "optimizer.lr must be > 0"),
        ({"optimizer": {"name": "adamw"}}, "optimizer.name: input should be 'adam', 'lbfgs' or 'sgd'"),
        ({"iterations": -5}, "iterations must be > 0"),
        ({"iterations": 2.5}, "iterations: input should be a valid integer, got a number with a fractional part"),
        ({"size": 0}, "size must be within 1..4096"),
        ({"size": 5000}, "size must be within 1..4096"),
        ({"size": 5000, "max_size": 8192}, None),
        ({"layers": {"content": ["relu9_9"]}}, "layers: unknown VGG-19 layer 'relu9_9'"),
        ({"optimizer": 0.1}, "optimizer: input should be a dictionary"),
        ({"precision": "fp8"}, "precision: input should be 'fp32', 'bf16' or 'auto', got 'fp8'"),
        ({"alpha": True}, "alpha: expected a number, got True (bool)"),  # YAML's `yes`, not 1
        ({"content": ""}, "content: string should have at least 1 character"),
        ({"snapshots": [0, "x"]}, "snapshots[1]: input should be a valid integer"),
        ({"layers": {"style": {"relu1_1": "x"}}}, "layers.style.relu1_1: input should be a valid number"),
        ({"style": 5}, "style: input should be a valid string, got 5 (int)"),  # not "a valid tuple"
        ({"scales": "fine"}, "scales: input should be 'auto', got 'fine'"),
        ({"beta": float("inf")}, "beta: input should be a finite number"),
        # J = 0 for every image: the run would end as its start image, looking like it worked.
        ({"alpha": 0, "beta": 0}, "nothing to optimize: J is 0 (alpha 0, content layers ['relu4_2']; beta 0"),
        ({"alpha": 0, "layers": {"style": {"relu1_1": 0}}}, "nothing to optimize"),
        ({"beta": 0, "layers": {"content": []}}, "nothing to optimize"),
        ({"alpha": 0, "beta": 0, "gamma": 1}, None),  # total variation alone moves the pixels
        ({"alpha": 0}, None),  # the style alone: a texture from the start image
        ({"layers": {"style": []}}, None),  # the content alone: a reconstruction
    ],
)
def test_bad_values_name_the_key(data, message) -> None:
    if message is None:
        run_config({**BASE, **data})
        return
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        run_config({**BASE, **data}, source="x.yaml")
    assert str(info.value).startswith("x.yaml: ")


def test_missing_content_is_named() -> None:
    with pytest.raises(ConfigError, match="missing key 'content'"):
        run_config({"style": "b.jpg"})


def test_flatten_and_run_key() -> None:
    config = run_config(BASE)
    flat = flatten(to_dict(config))
    assert flat["optimizer.lr"] == 0.1 and flat["layers.style.relu3_1"] == 0.2 and flat["size"] == 256
    assert run_key(config) == run_key(run_config(dict(BASE)))
    assert run_key(config) != run_key(run_config({**BASE, "seed": 1}))
