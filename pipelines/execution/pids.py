"""Whether a process of this machine still runs: what a kill -9 left behind (a batch's folder, a sweep's lease) is
cleared once its process is gone."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: no signal sent, only the check that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
