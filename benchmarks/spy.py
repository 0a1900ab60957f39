"""`python -m benchmarks.spy PROFILE`: where a thread's wall time went, from a py-spy profile.

A GPU's tracked lr sweep took 3.6 ms a step beyond its graphed step (BENCHMARKS-cuda.md) and the fit's
own clock (pipelines.tracking.fit_times) names only the tracking work it times. py-spy samples every
Python frame of the loop's thread from outside, without changing the code: `gpu_check.sh spy` records
the lr sweep with `py-spy record --idle --threads --nonblocking -f raw` (--idle: waits count, so the
samples are the thread's wall time; --nonblocking: the process is not paused at each sample, which
here made a host-bound fit 9× slower). This reads that raw file (one line per distinct stack:
`thread (id): name;frame (file:line);... count`) and prints, for the samples of one thread inside a
frame (the fit: `Trainer.fit`), each function's share of them: inclusive (it or what it called) and
its own (the innermost frame, by line).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^:()]*)(?::(?P<line>\d+))?\)$")


def _function(frame: str) -> str:
    """'f (path/file.py:584)' -> 'f (path/file.py)': a function, whatever line of it the sample was at."""
    match = FRAME.match(frame)
    return f"{match['function']} ({match['file']})" if match else frame


def shares(lines: list[str], thread: str = "MainThread", inside: str = "Trainer.fit"
           ) -> tuple[int, Counter[str], Counter[str]]:
    """(samples of `thread` with a frame named `inside` on their stack, samples by function on the
    stack below that frame (each counted once per stack), samples by innermost frame)."""
    total, inclusive, own = 0, Counter[str](), Counter[str]()
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        if not frames[0].endswith(f": {thread}"):
            continue
        below = next((i for i, f in enumerate(frames) if f.startswith(f"{inside} (")), None)
        if below is None:
            continue
        n = int(count)
        total += n
        for function in {_function(f) for f in frames[below + 1:]}:
            inclusive[function] += n
        own[frames[-1]] += n
    return total, inclusive, own


def report(lines: list[str], thread: str = "MainThread", inside: str = "Trainer.fit", top: int = 30) -> str:
    total, inclusive, own = shares(lines, thread, inside)
    if not total:
        return f"no samples of thread {thread} inside {inside}"
    everywhere = [f for f, n in inclusive.items() if n == total]  # the loop's own frames: no news
    out = [f"{total} samples of {thread} inside {inside}", "",
           f"inclusive (it and what it called), apart from the {len(everywhere)} functions on every sample:"]
    out += [f"{100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top + len(everywhere)) if n < total]
    out += ["", "own (the innermost frame):"]
    out += [f"{100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    return "\n".join(out)


def swept(path: Path) -> str:
    """The sweep `path` at its own settings into a fresh store (batched: `--batch auto`), what py-spy
    records: its wall, its fits' and their breakdown (pipelines.tracking.fit_times)."""
    from benchmarks.loops import sweep
    from pipelines.execution.run import quiet_lightning
    from pipelines.tracking.fit_times import described

    quiet_lightning()
    timed = sweep(path, {}, "auto")
    return f"{path.name}: wall {timed.wall:.1f} s, {described(timed.fit_times, timed.fit)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.spy", description=__doc__.split("\n")[0])
    parser.add_argument("profile", type=Path, nargs="?", help="py-spy's raw output (record -f raw --threads)")
    parser.add_argument("--sweep", type=Path, help="run this experiment file instead (batched), to be recorded")
    parser.add_argument("--thread", default="MainThread")
    parser.add_argument("--inside", default="Trainer.fit", help="only the samples with this function on the stack")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    if args.sweep:
        print(swept(args.sweep))
    elif args.profile:
        print(report(args.profile.read_text().splitlines(), args.thread, args.inside, args.top))
    else:
        parser.error("give a py-spy profile, or --sweep FILE")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
