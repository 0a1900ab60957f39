"""Where a tracked fit's time goes besides its steps: the loop's own tracking work, timed by part.

On an H200 a tracked step of the lr sweep cost 3.6 ms more than the bare step replayed from a CUDA
graph (9.6 s for 2000 steps against 2.4 s; BENCHMARKS-cuda.md), and on this 2-core CPU a step
whose losses cost nothing took 3.5 ms with a checkpoint every 100 steps against 0.5 ms without
(BENCHMARKS.md, "A step's host work"), and nothing said where that went. Each part below is timed
in the loop's thread around what it does there; what a fit's seconds hold beyond their sum is
the steps themselves, with Lightning's loop around them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

#: The losses buffered on the device brought to the host (one copy every CHUNK steps): on a GPU this
#: also waits for the steps launched before it to finish, so it holds device time the launches ran ahead of.
READ_BACK = "losses read back"
ROWS = "rows handed to writers"  # each run's rows built and handed to its writer
SNAPSHOTS = "snapshots"  # the images read back, their quality metrics measured, handed to the writers
CHECKPOINTS = "checkpoints taken"  # each run's share of the state copied to the host and handed over
WRITERS = "waiting for writers"  # a round of checkpoints waiting until the rounds before are in the store
PARTS = (READ_BACK, ROWS, SNAPSHOTS, CHECKPOINTS, WRITERS)


class FitTimes:
    """Seconds the loop spent on each part of its tracking (PARTS), summed over the fit."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PARTS, 0.0)

    @contextmanager
    def timing(self, part: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] += time.perf_counter() - start


def described(seconds: dict[str, float], fit: float) -> str:
    """'of the fit's 9.6 s: waiting for writers 5.1 s, …; its steps the other 3.1 s' (parts over 1 ms)."""
    parts = [f"{part} {s:.2f} s" for part, s in sorted(seconds.items(), key=lambda kv: -kv[1]) if s >= 0.001]
    rest = fit - sum(seconds.values())
    return f"of the fit's {fit:.1f} s: {', '.join(parts) or 'no tracking work'}; its steps the other {rest:.1f} s"
