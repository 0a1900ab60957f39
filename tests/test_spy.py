"""benchmarks.spy: a py-spy profile of a sweep's loop read into each function's share of the fit's wall time."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.spy import main, shares

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "experiments" / "images"
FIT = "thread (1): MainThread;<module> (run.py:3);Trainer.fit (pytorch_lightning/trainer/trainer.py:584)"


def test_each_function_counts_once_per_sample_and_only_inside_the_fit() -> None:
    lines = [
        f"{FIT};step (nst/optim.py:10);update (nst/optim.py:20) 6",
        f"{FIT};step (nst/optim.py:10);step (nst/optim.py:12) 2",  # recursion: `step` counts these 2 once
        f"{FIT};flush (pipelines/run_log.py:5) 2",
        "thread (1): MainThread;<module> (run.py:3);load (nst/vgg.py:1) 50",  # before the fit: not counted
        "thread (2): nst-metrics;write (pipelines/run_writer.py:9) 40",  # another thread
    ]
    total, inclusive, own = shares(lines)
    assert total == 10
    assert inclusive["step (nst/optim.py)"] == 8 and inclusive["update (nst/optim.py)"] == 6
    assert inclusive["flush (pipelines/run_log.py)"] == 2 and "load (nst/vgg.py)" not in inclusive
    assert own == {"update (nst/optim.py:20)": 6, "step (nst/optim.py:12)": 2, "flush (pipelines/run_log.py:5)": 2}
    total, inclusive, _ = shares(lines, thread="nst-metrics", inside="write")
    assert total == 40 and not inclusive  # its samples, with nothing called below `write`


def _py_spy() -> str | None:
    """py-spy: on PATH, beside this Python (make test's .venv), or where a GPU machine's .whl/env.sh puts it."""
    there = [Path(sys.executable).with_name("py-spy"), Path("/tmp/site/bin/py-spy")]
    return shutil.which("py-spy") or next((str(p) for p in there if p.is_file()), None)


def test_a_real_profile_of_a_sweep_names_the_loops_functions(tmp_path, capsys) -> None:
    """What `gpu_check.sh spy` does on a GPU, on a tiny sweep: py-spy records `benchmarks.spy --sweep`,
    which prints the fit's own breakdown, and the report names the optimizer's step inside the fit."""
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text(f"""
name: tiny
base: {{preset: seed, content: {IMAGES / "grace_hopper.jpg"}, style: {IMAGES / "starry_night.jpg"}, size: 32,
        iterations: 300, snapshots: [0], checkpoint_every: 100}}
grid: {{optimizer.lr: [0.1, 1.0]}}
""")
    raw, spy = tmp_path / "spy.raw", _py_spy()
    if spy is None:
        pytest.skip("py-spy is not installed here (make test installs it; benchmarks/gpu_spy_wheel.sh adds it "
                    "to a GPU machine's .whl/)")
    recorded = subprocess.run(
        [spy, "record", "--idle", "--threads", "--nonblocking", "-r", "200", "-f", "raw", "-o", str(raw), "--",
         sys.executable, "-m", "benchmarks.spy", "--sweep", str(sweep)],
        capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert recorded.returncode == 0, recorded.stderr[-2000:]
    assert "tiny.yaml: wall " in recorded.stdout and "of the fit's " in recorded.stdout
    assert main([str(raw)]) == 0
    report = capsys.readouterr().out
    assert " samples of MainThread inside Trainer.fit" in report.splitlines()[0]
    assert "_SampleOptimizer.step (nst/optim.py)" in report
    assert "100.0%" not in report.split("own (")[0]  # the frames on every sample are left out of the inclusive list
