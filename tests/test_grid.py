"""Experiment files: expansion (cartesian, zip, seeds, overrides) and every validation error."""

from pathlib import Path

import pytest
import yaml

from pipelines.config.coerce import ConfigError
from pipelines.config.grid import find_config, load_experiment
from pipelines.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "experiments" / "images"
BASE = f"""
base:
  content: {IMAGES / "grace_hopper.jpg"}
  style: {IMAGES / "starry_night.jpg"}
  size: 32
  iterations: 5
"""


def _write(tmp_path: Path, body: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def test_cartesian_product_with_seeds(tmp_path) -> None:
    path = _write(tmp_path, "name: t\n" + BASE + "grid:\n  optimizer.lr: [0.1, 1]\n  size: [32, 48]\nseeds: [0, 7]\n")
    experiment = load_experiment(path)
    assert len(experiment.points) == 8
    combos = {(p.config.optimizer.lr, p.config.size, p.config.seed) for p in experiment.points}
    assert len(combos) == 8
    assert experiment.points[0].name == "lr=0.1 size=32 seed=0"
    assert experiment.varied_keys == ["optimizer.lr", "size", "seed"]
    assert len({p.key for p in experiment.points}) == 8


def test_zip_varies_lists_together(tmp_path) -> None:
    body = "name: t\n" + BASE + "zip:\n  alpha: [1, 10, 100]\n  beta: [100, 10, 1]\n"
    experiment = load_experiment(_write(tmp_path, body))
    assert [(p.config.alpha, p.config.beta) for p in experiment.points] == [(1, 100), (10, 10), (100, 1)]


def test_zip_and_grid_combine(tmp_path) -> None:
    body = "name: t\n" + BASE + "grid:\n  seed: [0]\n  optimizer.lr: [0.1, 1]\n"
    body += "zip:\n  alpha: [1, 2]\n  beta: [3, 4]\n"
    assert len(load_experiment(_write(tmp_path, body)).points) == 4


def test_overrides_apply_to_the_base_and_may_not_touch_what_the_grid_varies(tmp_path) -> None:
    path = _write(tmp_path, "name: t\n" + BASE + "grid:\n  optimizer.lr: [0.1, 1]\n")
    experiment = load_experiment(path, {"iterations": 3, "optimizer.name": "sgd"})
    assert {p.config.iterations for p in experiment.points} == {3}
    assert [(p.config.optimizer.name, p.config.optimizer.lr) for p in experiment.points] == [("sgd", 0.1), ("sgd", 1.0)]
    with pytest.raises(ConfigError, match=r"--set optimizer\.lr: the file.s grid varies it"):
        load_experiment(path, {"optimizer.lr": 5.0})  # the grid would replace it at every point


def test_relative_paths_resolve_against_the_file_then_cwd(tmp_path, monkeypatch) -> None:
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "c.png").write_bytes((IMAGES / "grace_hopper.jpg").read_bytes())
    body = "name: t\nbase:\n  content: pics/c.png\n  style: experiments/images/starry_night.jpg\n"
    body += "grid:\n  seed: [0, 1]\n"
    monkeypatch.chdir(ROOT)
    point = load_experiment(_write(tmp_path, body)).points[0]
    assert point.config.content == str(tmp_path / "pics" / "c.png")
    assert point.config.style == str(IMAGES / "starry_night.jpg")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("name: t\n" + BASE + "grid:\n  optimizer.lr: [0.1\n", "line"),
        ("name: t\n" + BASE + "gird:\n  optimizer.lr: [0.1]\n", "unknown key 'gird'; did you mean 'grid'"),
        ("name: t\n" + BASE + "grid:\n  optimizer.lr: [fast]\n",
         "optimizer.lr: input should be a valid number, unable to parse string as a number, got 'fast'"),
        ("name: t\n" + BASE + "grid:\n  optimizer.lrr: [0.1]\n", "did you mean 'optimizer.lr'"),
        ("name: t\n" + BASE + "grid:\n  optimizer.lr: [-1]\n", "optimizer.lr must be > 0"),
        ("name: t\n" + BASE + "grid: {}\n", "nothing varies"),
        ("name: t\n" + BASE + "grid:\n  optimizer.lr: []\n", "list should have at least 1 item"),
        ("name: t\n" + BASE + "zip:\n  alpha: [1, 2]\n  beta: [1]\n", "equal lengths"),
        ("name: t\n" + BASE + "grid:\n  seed: [0]\nseeds: [-1]\n", "seeds[0]: input should be greater than or equal"),
        (BASE + "grid:\n  seed: [0, 1]\n", "missing key 'name'; name: the MLflow experiment's"),
        ("- just\n- a list\n", "expected a mapping"),
        ("name: t\nbase:\n  style: x.jpg\ngrid:\n  seed: [0, 1]\n", "missing key 'content'"),
        ("name: t\n" + BASE + "grid:\n  layers.content: [[relu9_1]]\n", "unknown VGG-19 layer"),
        ("name: t\n" + BASE + "grid:\n  seed: [0, 1]\nclaims:\n  - {claim: good, runn: {}}\n",
         "unknown key 'claims[0].runn'; did you mean 'claims[0].run'?"),
    ],
    ids=["syntax", "top-key", "type", "nested-key", "range", "empty-grid", "empty-list", "zip-lengths",
         "seeds", "no-name", "not-mapping", "missing-content", "layer", "claim-key"],
)
def test_validation_errors_name_file_and_key(tmp_path, body, message) -> None:
    path = _write(tmp_path, body)
    with pytest.raises(UserError) as info:
        load_experiment(path)
    text = str(info.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text


def test_a_key_written_with_nothing_under_it_is_left_out(tmp_path) -> None:
    # YAML reads `zip:` with nothing under it as null: the same as no zip (and no variants, claims, ...).
    body = "name: t\ndescription:\n" + BASE + "grid:\n  seed: [0, 1]\nzip:\nvariants:\nclaims:\nnotes:\n"
    experiment = load_experiment(_write(tmp_path, body))
    assert len(experiment.points) == 2 and experiment.zip == {} and experiment.claims == []
    assert experiment.description == ""


def test_a_wrong_top_level_value_says_what_its_key_holds(tmp_path) -> None:
    with pytest.raises(UserError, match=r"max_runs: input should be greater than 0, got 0 \(int\); "
                                        r"max_runs: more runs than this ask for --yes"):
        load_experiment(_write(tmp_path, "name: t\n" + BASE + "grid:\n  seed: [0, 1]\nmax_runs: 0\n"))


def test_errors_are_config_errors_for_points(tmp_path) -> None:
    path = _write(tmp_path, "name: t\n" + BASE + "grid:\n  optimizer.lr: [0.1, -2]\n")
    with pytest.raises(ConfigError, match=r"\[lr=-2 seed=0\]"):
        load_experiment(path)


def test_find_config_looks_in_experiments(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    assert find_config("lr_sweep.yaml") == Path("experiments/lr_sweep.yaml")
    assert find_config("lr_sweep") == Path("experiments/lr_sweep.yaml")
    with pytest.raises(UserError, match="no such experiment file"):
        find_config("nope.yaml")


def test_find_config_finds_the_shipped_experiments_from_any_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no experiments/ here
    assert find_config("lr_sweep.yaml") == find_config("lr_sweep") == ROOT / "experiments" / "lr_sweep.yaml"
    with pytest.raises(UserError, match=rf"nope: no such experiment file \(here or in experiments/ or "
                                        rf"{ROOT}/experiments/: .*gallery.yaml, .*lr_sweep.yaml"):
        find_config("nope")
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "lr_sweep.yaml").write_text("name: mine\n")  # this folder's own comes first
    assert find_config("lr_sweep") == Path("experiments/lr_sweep.yaml")


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_experiment_validates_and_expands(path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    experiment = load_experiment(path)
    assert experiment.points and experiment.description
    for point in experiment.points:
        assert Path(point.config.content).is_file() and all(Path(s).is_file() for s in point.config.styles)


def test_variants_are_named_runs_combined_with_the_grid(tmp_path) -> None:
    path = tmp_path / "v.yaml"
    path.write_text("name: v\n" + BASE + "grid:\n  optimizer.lr: [0.1, 1.0]\nvariants:\n  plain: {}\n"
                    "  luminance: {preserve_color: luminance}\n")
    experiment = load_experiment(path)
    names = [p.name for p in experiment.points]
    assert names == ["plain lr=0.1 seed=0", "plain lr=1 seed=0", "luminance lr=0.1 seed=0", "luminance lr=1 seed=0"]
    assert [p.config.preserve_color for p in experiment.points] == ["none", "none", "luminance", "luminance"]
    assert experiment.points[2].varied["variant"] == "luminance"
    path.write_text("name: v\n" + BASE + "variants:\n  bad: 3\n")
    with pytest.raises(UserError, match=r"variants\.bad: input should be a valid dictionary"):
        load_experiment(path)


def test_fast_expansion_builds_the_configs_and_keys_of_building_each_point_anew(tmp_path) -> None:
    """Each point is the first one with its varied fields replaced: it must equal the config built from
    scratch, for nested keys, whole sub-configs, image paths, a zip, variants and a seed axis."""
    from pipelines.config import presets
    from pipelines.config.paths import resolve_paths
    from pipelines.config.run_key import run_key
    from pipelines.config.runs import run_config
    from pipelines.config.yaml_files import merge

    images = Path(__file__).resolve().parents[1] / "experiments" / "images"
    path = tmp_path / "mixed.yaml"
    path.write_text(f"""
name: mixed
base: {{content: {images / "grace_hopper.jpg"}, style: {images / "starry_night.jpg"}, size: 64,
        optimizer: {{name: adam, lr: 0.1, schedule: cosine}}, layers: {{style: [relu1_1, relu2_1]}}}}
grid:
  optimizer.lr: [0.5, 2]
  layers.style.relu1_1: [0.3, 0.7]
  stop: [{{rel_improvement: 0.01, window: 5}}, {{rel_improvement: 0}}]
  seed: [3, 4]
zip:
  style: [{images / "the_scream.jpg"}, {images / "the_kiss.jpg"}]
  beta: [1, 10]
variants:
  plain: {{}}
  sgd: {{optimizer: {{name: sgd, lr: 1e-9}}, alpha: 2}}
""")
    experiment = load_experiment(path)
    assert len(experiment.points) == 2 * 2 * 2 * 2 * 2 * 2
    roots = (path.parent, Path.cwd())
    raw = yaml.safe_load(path.read_text())
    for point in experiment.points:
        varied = {k: v for k, v in point.varied.items() if k != "variant"}
        changes = raw["variants"][point.varied["variant"]]
        data = resolve_paths(merge(merge(resolve_paths(raw["base"], roots), changes), varied), roots)
        anew = run_config(data, preset=presets.DEFAULT)  # experiment files start from the default recipe
        assert point.config == anew, point.name
        assert point.key == run_key(anew), point.name
