"""RunConfig: coercion, validation messages, --set parsing, flattening, run keys."""

import pytest

from pipelines.config.runs import ConfigError, flatten, merge, parse_set, run_config, run_key, to_dict

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


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"optimizer": {"lrr": 0.1}}, "unknown key 'optimizer.lrr'; did you mean 'optimizer.lr'"),
        ({"iteratons": 5}, "did you mean 'iterations'"),
        ({"optimizer": {"lr": "fast"}}, "optimizer.lr: expected a number, got 'fast'"),
        ({"optimizer": {"lr": -0.1}}, "optimizer.lr must be > 0"),
        ({"optimizer": {"name": "adamw"}}, "optimizer.name must be one of adam, lbfgs, sgd"),
        ({"iterations": -5}, "iterations must be > 0"),
        ({"iterations": 2.5}, "iterations: expected an integer"),
        ({"size": 0}, "size must be within 1..4096"),
        ({"size": 5000}, "size must be within 1..4096"),
        ({"size": 5000, "max_size": 8192}, None),
        ({"layers": {"content": ["relu9_9"]}}, "unknown VGG-19 layer 'relu9_9'"),
        ({"optimizer": 0.1}, "optimizer: expected a mapping"),
        ({"precision": "fp8"}, "precision must be one of fp32, bf16, auto"),
    ],
)
def test_bad_values_name_the_key(data, message) -> None:
    if message is None:
        run_config({**BASE, **data})
        return
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")) as info:
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
