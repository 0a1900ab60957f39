"""Presets: `nst run` and experiment files start from the default recipe, `seed` is the slides'
formulation exactly (the seed experiments' runs keep their keys), a user's keys win, key by key
inside nested settings; `nst sheet` lays a sweep's finals out as a matrix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines.cli import main
from pipelines.config import presets
from pipelines.config.coerce import ConfigError
from pipelines.config.grid import load_experiment
from pipelines.config.run_key import run_key
from pipelines.config.runs import RunConfig, run_config

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "experiments" / "images"
PAIR = {"content": str(IMAGES / "grace_hopper.jpg"), "style": str(IMAGES / "starry_night.jpg")}


def test_seed_is_the_library_defaults_and_keeps_run_keys() -> None:
    seed = run_config({**PAIR, "preset": "seed"})
    assert seed == RunConfig(**PAIR) == run_config(PAIR)  # nobody naming a preset gets nst.config's defaults
    assert run_key(seed) == run_key(RunConfig(**PAIR))


def test_the_default_recipe_is_what_the_command_line_and_experiment_files_start_from(tmp_path) -> None:
    default = run_config({**PAIR, "preset": "default"})
    for key, value in presets.PRESETS["default"].items():
        if not isinstance(value, dict):
            assert getattr(default, key) == (tuple(value) if isinstance(value, list) else value), key
    path = tmp_path / "exp.yaml"
    path.write_text(f"name: exp\nbase: {{content: {PAIR['content']}, style: {PAIR['style']}}}\n"
                    "grid: {beta: [1, 2]}\n")
    point = load_experiment(path).points[0]
    assert point.config.preset == "default" and point.config.init == default.init


def test_a_users_keys_win_key_by_key_inside_nested_settings() -> None:
    config = run_config({**PAIR, "preset": "default", "optimizer": {"lr": 0.5}, "beta": 7.0})
    default = run_config({**PAIR, "preset": "default"})
    assert config.optimizer.lr == 0.5 and config.optimizer.name == default.optimizer.name
    assert config.beta == 7.0 and config.init == default.init


def test_an_unknown_preset_is_named(store, capsys) -> None:
    with pytest.raises(ConfigError, match="preset: expected one of seed, default"):
        run_config({**PAIR, "preset": "fancy"})
    code = main(["run", "--content", PAIR["content"], "--style", PAIR["style"], "--preset", "fancy",
                 "--tracking-uri", store])
    assert code == 2 and "preset: expected one of" in capsys.readouterr().err


def test_nst_run_logs_which_preset_it_started_from(store) -> None:
    assert main(["run", "--content", PAIR["content"], "--style", PAIR["style"], "--set", "size=32",
                 "--set", "iterations=2", "--tracking-uri", store, "--quiet"]) == 0
    assert main(["run", "--content", PAIR["content"], "--style", PAIR["style"], "--preset", "seed",
                 "--set", "size=32", "--set", "iterations=2", "--tracking-uri", store, "--quiet"]) == 0
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("nst").experiment_id], order_by=["attributes.start_time"])
    assert [r.data.params["preset"] for r in runs] == ["default", "seed"]
    assert runs[0].data.params["init"] == presets.PRESETS["default"]["init"]
    assert runs[1].data.params["init"] == "content+noise"


def test_sheet_lays_out_a_sweeps_finals_by_what_they_vary(tmp_path, store) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(f"""
name: tiny
base: {{preset: seed, size: 32, iterations: 3, snapshots: [0]}}
grid:
  content: [{IMAGES / "grace_hopper.jpg"}, {IMAGES / "coffee.jpg"}]
  style: [{IMAGES / "starry_night.jpg"}, {IMAGES / "the_kiss.jpg"}]
""")
    assert main(["experiment", str(path), "--tracking-uri", store, "--quiet"]) == 0
    out = tmp_path / "sheet"
    assert main(["sheet", "tiny", "--out", str(out), "--images", "--tracking-uri", store]) == 0
    text = (out / "sheet.md").read_text()
    assert "| | starry_night | the_kiss |" in text and "| grace_hopper |" in text and "| coffee |" in text
    assert len(re.findall(r"SSIM \d", text)) == 4 and (out / "sheet.jpg").stat().st_size > 10_000
    names = sorted(p.name for p in out.glob("*__*.jpg"))
    assert names == ["coffee__starry_night.jpg", "coffee__the_kiss.jpg", "grace_hopper__starry_night.jpg",
                     "grace_hopper__the_kiss.jpg"]


def test_a_sheet_gives_every_run_a_cell_of_its_own(tmp_path, store, capsys) -> None:
    # The lr sweep varies neither photo nor painting: the sheet's old default (content down, style
    # across) put its runs in one cell, each drawn over the last, and showed one.
    path = tmp_path / "lrs.yaml"
    path.write_text(f"name: lrs\nbase: {{content: {PAIR['content']}, style: {PAIR['style']}, size: 32, "
                    "iterations: 2, snapshots: [0]}\ngrid:\n  optimizer.lr: [0.1, 1]\nseeds: [0]\n")
    assert main(["experiment", str(path), "--tracking-uri", store, "--quiet"]) == 0
    out = tmp_path / "sheet"
    assert main(["sheet", "lrs", "--out", str(out), "--tracking-uri", store]) == 0
    text = (out / "sheet.md").read_text()
    assert "| | lr=0.1 | lr=1 |" in text and len(re.findall(r"SSIM \d", text)) == 2
    assert main(["sheet", "lrs", "--out", str(out), "--rows", "lr", "--tracking-uri", store]) == 0  # short keys
    assert "| lr=0.1 |" in (out / "sheet.md").read_text()
    assert main(["report", "lrs", "--out", str(out), "--dpi", "30", "--tracking-uri", store]) == 0
    # The report says what the sweep is without a description too: what takes more than one value
    # (its one seed is not an axis).
    assert "\nA sweep varying optimizer.lr (its experiment file has no `description:`).\n" in (
        out / "report.md").read_text()
    capsys.readouterr()
    for argv, needle in ((["--rows", "seed", "--cols", "seed"], "would share a cell: add optimizer.lr"),
                         (["--cols", "beta"], "--cols beta: not a key this sweep varies; it varies optimizer.lr")):
        assert main(["sheet", "lrs", "--out", str(out), *argv, "--tracking-uri", store]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err


@pytest.mark.parametrize(("varied", "rows", "cols"), [
    ({"optimizer.lr": ["0.1", "1"]}, [], ["optimizer.lr"]),
    ({"optimizer.lr": ["0.1", "1"], "beta": ["1", "2"]}, ["optimizer.lr"], ["beta"]),
    ({"content": ["a/x.jpg", "a/y.jpg"], "optimizer.lr": ["0.1", "1"]}, ["content"], ["optimizer.lr"]),
    ({"style": ["a/x.jpg", "a/y.jpg"], "optimizer.lr": ["0.1", "1"]}, ["optimizer.lr"], ["style"]),
    ({"content": ["a/x.jpg", "a/y.jpg"], "style": ["a/x.jpg", "a/y.jpg"], "seed": ["0", "0"]}, ["content"], ["style"]),
], ids=["lr", "lr-beta", "content-lr", "style-lr", "gallery"])
def test_a_sheets_default_layout(varied, rows, cols) -> None:
    from itertools import product

    from pipelines.reports.readback import RunView, SweepView
    from pipelines.reports.sheet import layout

    keys = list(varied)
    points = [dict(zip(keys, p, strict=True)) for p in product(*(dict.fromkeys(v) for v in varied.values()))]
    runs = [RunView(run=None, name=str(p), varied=p, history={}) for p in points]  # type: ignore[arg-type]
    assert layout(SweepView("x", None, {}, runs), None, None) == (rows, cols)  # type: ignore[arg-type]


def test_a_sheets_caption_reads_time_ssim_and_style_distance() -> None:
    from types import SimpleNamespace

    from pipelines.reports.sheet import Cell

    metrics = {"quality/ssim_content": -0.001, "quality/gram_distance": 1.296}
    run = SimpleNamespace(info=SimpleNamespace(start_time=0, end_time=83_400), data=SimpleNamespace(metrics=metrics))
    view = SimpleNamespace(run=run)
    assert Cell("r", "c", view).caption() == "1:23 · SSIM 0.00 · style 1.30"  # type: ignore[arg-type]


def test_a_sheets_labels_say_whose_value_they_are() -> None:
    from pipelines.reports.sheet import _label

    assert _label("content", "/photos/grace_hopper.jpg") == "grace_hopper"  # which image, not where it lies
    assert _label("variant", "adam") == "adam"  # a recipe's name says itself
    assert _label("optimizer.lr", "1.0") == "lr=1" and _label("preserve_color", "none") == "preserve_color=none"


def test_a_sheets_rows_are_as_tall_as_their_images(tmp_path) -> None:
    """A landscape photo's row is shorter than a portrait's: rows of one height left landscape rows in
    white space (the gallery's cat and coffee)."""
    from types import SimpleNamespace

    import torch
    from PIL import Image

    from pipelines.reports.sheet import Cell, write_sheet

    run = SimpleNamespace(info=SimpleNamespace(start_time=0, end_time=1000), data=SimpleNamespace(metrics={}))

    def height(h: int, w: int) -> int:
        found = [Cell(row, col, SimpleNamespace(run=run, final=torch.rand(1, 3, h, w)))  # type: ignore[arg-type]
                 for row in ("a", "b") for col in ("x", "y")]
        write_sheet(found, tmp_path / f"{h}x{w}", "t", dpi=50)
        with Image.open(tmp_path / f"{h}x{w}" / "sheet.jpg") as sheet:
            return sheet.size[1]

    landscape, square, portrait = height(40, 60), height(60, 60), height(60, 40)
    assert landscape < 0.8 * square and square < 0.8 * portrait
