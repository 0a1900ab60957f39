"""The benchmark code runs end to end at toy sizes (no timing is asserted)."""

from benchmarks.bench import main


def test_bench_smoke_writes_every_table(tmp_path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    assert main(["--smoke", "--out", str(out)]) == 0
    text = out.read_text()
    for heading in ("## Overhead", "## Roofline", "## Precision", "## Memory"):
        assert heading in text
    assert text.count("| 32 px |") == 1 and "bf16" in text
