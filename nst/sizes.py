"""The image sizes (long side, px) a run optimizes at, smallest first: its pyramid (nst.scales resizes
to them). Without torch: a config's sizes are checked before torch loads."""

from __future__ import annotations

import math

AUTO_MIN = 128  # the first scale of `scales: auto`


def pyramid(scales: tuple[int, ...] | str, size: int, min_size: int = AUTO_MIN) -> list[int]:
    """The sizes to run at, ending at `size`.

    () -> [size]; "auto" -> min_size, min_size*sqrt2, ... below size, then size; an explicit
    list -> itself, with `size` appended when it ends below it.
    """
    if isinstance(scales, str):  # "auto", the one word a config allows
        sizes, s = [], float(min_size)
        while round(s) < size:
            sizes.append(round(s))
            s *= math.sqrt(2)
        return [*sizes, size]
    if not scales:
        return [size]
    sizes = list(scales)
    if sizes[-1] > size:
        raise ValueError(f"scales end at {sizes[-1]} px, above the run's size {size}; the last scale is the size")
    return sizes if sizes[-1] == size else [*sizes, size]
