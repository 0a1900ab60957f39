"""The benchmark code runs end to end at toy sizes (no timing is asserted)."""

import importlib
from pathlib import Path

import pytest
import torch

from benchmarks.bench import main
from tests.lane import DEVICE, ON_GPU

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.heavy(2.3)  # minutes on the GPU lane (2026-11-28, H200): dealt first
def test_bench_smoke_writes_every_table(tmp_path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    assert main(["--smoke", "--device", DEVICE, "--out", str(out)]) == 0
    text = out.read_text()
    for heading in ("## Overhead", "## Roofline", "## Precision", "## Memory", "## Determinism"):
        assert heading in text
    assert text.count("| 32 px |") == 1 and "bf16" in text
    if ON_GPU:  # the lane's GPU is named, and the memory measured is its memory
        assert "GPU" in text and "peak GPU memory" in text


@pytest.mark.heavy(1.2)
def test_peer_bench_scores_pastiche_and_nst_by_one_objective(tmp_path) -> None:
    from benchmarks.peer import main as peer

    out = tmp_path / "BENCHMARKS.md"
    assert peer(["--size", "96", "--steps", "2", "--out", str(out)]) == 0
    text = out.read_text()
    assert "## Peer: pastiche" in text and text.count("| bf16") == 3


@pytest.mark.heavy(1.25)
def test_levers_bench_runs_each_cheap_lever(tmp_path) -> None:
    from benchmarks.levers import main as levers

    out = tmp_path / "BENCHMARKS.md"
    args = ["--size", "32", "--steps", "1", "--memory-size", "32",
            "--only", "baseline,nchw,inplace,checkpointed,untruncated,unfrozen"]
    assert levers([*args, "--out", str(out)]) == 0
    text = out.read_text()
    assert "## Levers" in text and "| activation checkpointing per block |" in text and "| checkpointed |" in text
    assert "| without truncation: all 16 of VGG-19's convolutions every pass |" in text
    assert "| without frozen weights" in text


def _smoke(main, tmp_path) -> str:
    """What a bench's `--smoke` run wrote into a fresh BENCHMARKS.md."""
    out = tmp_path / "BENCHMARKS.md"
    assert main(["--smoke", "--out", str(out)]) == 0
    return out.read_text()

def _batch_smoke(tmp_path, section: str) -> str:
    """What `benchmarks.batch --smoke --<section>` wrote into a fresh BENCHMARKS.md (its sections run apart:
    the four at once took 155 s of one pytest worker here, the suite's longest test)."""
    from benchmarks.batch import main as batch

    out = tmp_path / "BENCHMARKS.md"
    assert batch(["--smoke", f"--{section}", "--out", str(out)]) == 0
    return out.read_text()


@pytest.mark.heavy
def test_batch_bench_smoke_writes_its_section(tmp_path) -> None:
    text = _batch_smoke(tmp_path, "batches")
    assert "## Batches" in text and "| 32 px |" in text and "| 3 × 32 px, SQLite |" in text
    assert "| 3 × 32 px, a tracking server (SQLite behind it) |" in text
    assert "| lr_sweep, 4 steps |" in text and "| 8 points at 32 px, 3 steps |" in text
    assert "## Writers" not in text and "## CUDA graphs" not in text  # only the section asked for


@pytest.mark.heavy
def test_batch_bench_smoke_writes_the_writers_section(tmp_path) -> None:
    writers = _batch_smoke(tmp_path, "writers").split("## Writers")[1]
    assert "| 3 × 32 px |" in writers  # thread against process
    assert "| runs | writer thread | a process per batch | the sweep's processes, kept |" in writers
    assert "\n| 2 | " in writers  # two runs one at a time, each way
    assert "| writer processes | all rows written | rows a second | the writers' CPU |" in writers
    assert "\n| 1 | " in writers and "\n| 3 | " in writers  # the lr sweep's rows by one process, by three


def test_batch_bench_smoke_writes_the_cuda_graphs_section(tmp_path) -> None:
    text = _batch_smoke(tmp_path, "graphs")
    assert "## CUDA graphs" in text and "| tracked 3 × 32 px, per step |" in text
    assert "| lr_sweep batched, 4 steps: optimization (wall) |" in text
    # Where each of the lr sweep's fits went: its tracking work by part, its steps the rest.
    assert text.count("its steps the other ") == 2


@pytest.mark.heavy
def test_batch_bench_smoke_writes_the_tracking_server_section(tmp_path) -> None:
    text = _batch_smoke(tmp_path, "opening")
    assert "## A batch into a tracking server" in text and "| tracking server (SQLite behind it) |" in text
    assert "| 4 runs |" in text and "| 8 runs |" in text  # the whole batch; a sweep read back


@pytest.mark.heavy
def test_batch_bench_smoke_writes_the_signed_in_section(tmp_path) -> None:
    text = _batch_smoke(tmp_path, "signed-in")
    assert "## A sweep signed in" in text and "## A batch into a tracking server" not in text
    assert "| every request |" in text and "| once every 60 s |" in text  # a password checked each way


def test_make_bench_batch_writes_every_section_in_order(monkeypatch, tmp_path) -> None:
    import benchmarks.batch as bench

    ran: list[str] = []
    for name in ("batches", "writers", "graphs", "opening", "signed_in"):
        monkeypatch.setattr(bench, name, lambda device, smoke, out, name=name: ran.append(name))
    assert bench.main(["--smoke", "--out", str(tmp_path / "B.md")]) == 0
    assert ran == ["batches", "writers", "graphs", "opening", "signed_in"]
    ran.clear()
    assert bench.main(["--smoke", "--writers", "--signed-in", "--out", str(tmp_path / "B.md")]) == 0
    assert ran == ["writers", "signed_in"]


def test_the_bare_loop_steps_in_nsts_own_memory_layout(monkeypatch) -> None:
    # Every tracked-against-bare figure compares with this loop: its VGG must keep nst's NHWC weights
    # (from 9af61a2 until fixed, bare_step converted them to NCHW, 1.1-1.3x slower on this CPU).
    from benchmarks import loops

    built = []
    build = loops.batch_module
    monkeypatch.setattr(loops, "batch_module", lambda *args: built.append(build(*args)) or built[-1])
    loops.bare_step(loops.point_configs(1), 32, torch.device(DEVICE))
    weights = [p for p in built[0].vgg.parameters() if p.dim() == 4]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    assert built[0].image.is_contiguous()  # the images stay NCHW, as in nst's runs
    loops.bare_step(loops.point_configs(1), 32, torch.device(DEVICE), memory_format=torch.channels_last)
    assert built[1].image.is_contiguous(memory_format=torch.channels_last)  # step_profile's variant


@pytest.mark.heavy(2.4)  # 10 s on the 2-core CPU: each fit's writer processes start, 16 workers at once
def test_startup_smoke_writes_its_section(tmp_path) -> None:
    from benchmarks.startup import main as startup

    text = _smoke(startup, tmp_path)
    assert "## A tracked fit's one-off time" in text
    assert "| first in the process | 2 |" in text and "| second | 6 |" in text and "Paid once in a fit:" in text


def test_checkpoint_smoke_writes_its_section_and_stops_at_a_run_that_did_not_finish(tmp_path) -> None:
    from benchmarks.checkpoint import fresh_run
    from benchmarks.checkpoint import main as checkpoint

    text = _smoke(checkpoint, tmp_path)
    assert "## A checkpoint's cost" in text
    for writer in ("thread", "process"):
        assert f"| 32 px | {writer} | none |" in text and f"| 32 px | {writer} | the checkpoint's cost |" in text
        held = next(line for line in text.splitlines() if line.startswith(f"| 32 px | {writer} | at step 10 |"))
        assert held.split("|")[-2].strip().endswith("kB")  # the file was there to measure
        assert f"| 32 px | {writer} | resumed from step 10: 1 step, against the whole run |" in text
    with pytest.raises(SystemExit, match=r"the run did not finish \(exit 2\).*size must be within"):
        fresh_run(0, 2, 1, "cpu", tmp_path / "bad")


@pytest.mark.heavy(2.0)
def test_host_smoke_writes_its_section_with_the_runs_own_metrics(tmp_path) -> None:
    from benchmarks import loops
    from benchmarks.host import _cheap_losses
    from benchmarks.host import main as host

    text = _smoke(host, tmp_path)
    assert "## A step's host work" in text and "| 3 images |" in text and "| 8 images |" in text
    # The cheap losses stand in for the real ones name for name: the tracked runs log what real runs log.
    module = loops.batch_module(loops.point_configs(2), 32, torch.device(DEVICE))
    cheap, real = _cheap_losses(module), module.losses()
    assert cheap.keys() == real.keys() and all(v.shape == (2,) for v in cheap.values())


def test_step_profile_smoke_writes_its_section(tmp_path) -> None:
    from benchmarks.step_profile import main as step_profile

    text = _smoke(step_profile, tmp_path)
    assert "## Where a step's time goes" in text and "**2 × 32 px**" in text
    assert "| `aten::convolution_backward` |" in text  # the input's gradient through the VGG, on any device
    assert "| fp32 (`precision: fp32`) |" in text  # the other precision `auto` could pick, weighed too
    assert "Its floor, op by op (benchmarks.floor):" in text and "ms an image measured." in text


def test_the_floor_counts_each_kernel_s_bytes_once_and_views_not_at_all() -> None:
    """benchmarks.floor's Traffic: an add reads its two inputs and writes its output; a view, a transpose and
    an allocation launch no kernel; an in-place add reads both and writes the first."""
    from benchmarks.floor import Traffic

    a, b = torch.ones(1000), torch.ones(1000)  # 4000 bytes each
    with Traffic() as traffic:
        c = a + b
        c.view(10, 100).t()
        torch.empty(10**6)
        c.add_(a)
    assert dict(traffic.kernels) == {"add": 1, "add_": 1}
    assert traffic.bytes == {"add": 3 * 4000, "add_": 3 * 4000}


def test_the_floor_of_a_step_counts_its_convolutions_flops() -> None:
    from benchmarks.bench import _pair, conv_flops
    from benchmarks.floor import step_floor
    from nst.config import TransferConfig

    floor = step_floor(2, 32, torch.device(DEVICE))
    convolutions = 2 * conv_flops(TransferConfig(), *_pair(32)[0].shape[-2:])  # 2 images' forward and input-backward
    assert convolutions < floor.flops < 1.1 * convolutions  # the rest: the Gram matrices' products
    assert 150 < floor.kernels < 400 and floor.bytes > 0
    assert floor.heaviest[0][1] == max(n for _, n in floor.heaviest)


def test_a_batched_step_launches_no_more_kernels_than_it_did() -> None:
    """A small step on a GPU is bound by launching its kernels (~200, op by op; nst.graphs): a bare step of 3
    images launched 207 on the CPU before its losses' differences, squares, sums and input normalization
    dropped the kernels that change nothing (same bits: tests/test_losses.py), 183 until Adam's update, a call
    of 8 operations per distinct learning rate (per image on the CPU), became one multi-tensor update of
    all the images (nst.optim). A change that adds some raises this bound knowingly."""
    from benchmarks.floor import step_floor

    three = step_floor(3, 32, torch.device(DEVICE)).kernels
    assert three <= 167
    # Nor more with more images or learning rates: 8 images, 4 learning rates (benchmarks.loops.point_configs).
    assert step_floor(8, 32, torch.device(DEVICE)).kernels == three


@pytest.mark.parametrize("script", ["benchmarks.bench", "benchmarks.peer", "benchmarks.levers", "benchmarks.batch",
                                    "benchmarks.step_profile", "benchmarks.startup", "benchmarks.host",
                                    "benchmarks.checkpoint"])
def test_bench_asked_for_a_missing_gpu_says_so_in_one_line(script: str, capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: --device cuda is valid here")
    # In this process (a subprocess each cost 5 s of imports): the exit status and all the script printed.
    with pytest.raises(SystemExit) as exit_status:
        importlib.import_module(script).main(["--device", "cuda"])
    assert exit_status.value.code == 2
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err.strip().splitlines() == [printed.err.strip()]
    assert "no CUDA GPU" in printed.err


def test_a_benchmark_never_times_a_run_that_did_not_finish(monkeypatch) -> None:
    """A tracked run that FAILED (on a GPU every run once did, and was timed at 0.0 ms) stops the bench."""
    from benchmarks import bench
    from pipelines.execution.run import RunResult

    failed = RunResult("run-id", "FAILED", 0.01, error="Expected all tensors to be on the same device")
    monkeypatch.setattr(bench, "execute", lambda *args, **kwargs: failed)
    with pytest.raises(SystemExit, match="ended FAILED, not timed: Expected all tensors"):
        bench.tracked_run(32, 2, 1, torch.device("cpu"))


def test_a_machine_without_a_sign_in_server_says_so_and_keeps_the_rest(tmp_path, monkeypatch) -> None:
    # A GPU machine's MLflow may lack the server's extras: the signed-in table says why it is empty,
    # and the server tables measured before it stay (a failure there once dropped them all).
    from benchmarks import opening
    from benchmarks.markdown import Section
    from pipelines.errors import UserError

    def no_server(*args: object, **kwargs: object) -> None:
        raise UserError("the server's extras are not installed")

    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n")
    Section(out, ["## A batch into a tracking server", "", "| sweep | ... |"]).add("| 8 runs | 1 s |")
    monkeypatch.setattr(opening, "tracking_server", no_server)
    opening.signed_in(torch.device("cpu"), True, out)
    text = out.read_text()
    assert "| 8 runs | 1 s |" in text and "## A sweep signed in" in text
    assert "| every request | not measured: the server's extras are not installed |" in text
