"""One wrapper for every console entry point (stages, evaluations, chat, the ``longvila`` command).

A user's mistake or a stop the run decided on must read as one line on stderr with an exit code, never as a
traceback; the classes, labels and exit codes are ``longvila/errors.py``'s table. Every other exception is a bug
and keeps its traceback. A configuration error is the same on every rank of a launch, so only rank 0 prints it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from longvila.errors import USER_ERRORS


def setup_logging(rank: int | str) -> None:
    """INFO on rank 0, WARNING elsewhere (so N ranks do not print N progress logs), rank in every line."""
    logging.basicConfig(
        level=logging.INFO if str(rank) == "0" else logging.WARNING,
        format=f"[%(asctime)s rank{rank}] %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def user_error_types() -> tuple[type, ...]:
    """The exception classes that reach the user as one line (the pipeline names its stage in them)."""
    return tuple(cls for cls, _, _ in USER_ERRORS)


def run_console(prog: str, run: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> Any:
    """``run(argv)`` with the user-facing errors turned into ``<prog>: <label>: <message>`` and an exit code."""
    try:
        return run(list(sys.argv[1:] if argv is None else argv))
    except user_error_types() as error:
        label, code = next((label, code) for cls, label, code in USER_ERRORS if isinstance(error, cls))
        if code != 2 or _launched_rank() == 0:  # every rank reaches the same configuration error: say it once
            print(f"{prog}: {label}: {error}", file=sys.stderr)
        sys.exit(code)


def _launched_rank() -> int:
    """This process's rank as the launcher announced it (torchrun's RANK; 0 without a launcher)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0
