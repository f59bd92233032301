"""Fault injection for the kill drills: ``LONGVILA_FAULT=<point>:<step>[:<rank>]`` makes a run fail on purpose.

Why in the product: a resume path is only trusted once it has survived real kills at the worst moments, and
those moments (half-way through a step, half-way through a save) cannot be reached from outside the process with
any precision. The drills in tests/stages/test_fault_drills.py set the variable, let the run die, resume it, and
compare the final weights with an uninterrupted run.

Points:

* ``mid_step``: SIGKILL after the first micro-batch's backward of optimizer step ``<step>`` (gradients half
  accumulated, nothing stepped).
* ``mid_save``: SIGKILL in the save of step ``<step>`` after DeepSpeed wrote this rank's files and before the
  trainer state (a checkpoint cut short, as by a kill or a node loss).
* ``after_save``: SIGKILL right after the checkpoint of step ``<step>`` is complete.
* ``enospc``: the save of step ``<step>`` meets ``OSError(ENOSPC)`` when it writes the trainer state (a full disk).

Without ``<rank>`` every rank fails. An unset variable costs one dictionary lookup per point.
"""

from __future__ import annotations

import errno
import os
import signal
from dataclasses import dataclass
from typing import Optional

FAULT_VARIABLE = "LONGVILA_FAULT"
POINTS = ("mid_step", "mid_save", "after_save", "enospc")


@dataclass(frozen=True)
class Fault:
    point: str
    step: int
    rank: Optional[int] = None

    @classmethod
    def parse(cls, spec: str) -> "Fault":
        parts = spec.split(":")
        if len(parts) not in (2, 3) or parts[0] not in POINTS or not all(p.isdigit() for p in parts[1:]):
            raise ValueError(f"{FAULT_VARIABLE}={spec!r}: expected <point>:<step>[:<rank>] with point one of "
                             f"{', '.join(POINTS)}")
        return cls(parts[0], int(parts[1]), int(parts[2]) if len(parts) == 3 else None)


def planned_fault() -> Optional[Fault]:
    """The fault this process was asked to inject, read once when the trainer starts (a bad spec is an error)."""
    spec = os.environ.get(FAULT_VARIABLE)
    return Fault.parse(spec) if spec else None


def inject(fault: Optional[Fault], point: str, step: int, rank: int, path: str = "") -> None:
    """Fail here if ``fault`` names this point, step and rank: SIGKILL, or ENOSPC for ``enospc``."""
    if fault is None or fault.point != point or fault.step != step or fault.rank not in (None, rank):
        return
    if point == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    os.kill(os.getpid(), signal.SIGKILL)
