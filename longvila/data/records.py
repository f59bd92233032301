"""Reading JSON / JSONL record files with per-record validation.

Why one reader for every dataset: bad records must be handled the same way everywhere. A record that fails to
parse or validate is skipped with one warning naming the file, the line (or list index) and the reason, and
counted, so the caller can report ``num_malformed``. A file with no usable record at all is a configuration
error and raises ValueError.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


def read_records(path: str | os.PathLike, validate: Callable[[Any], Any]) -> tuple[list[Any], int]:
    """Read a JSON list or a JSONL file; return (validated records, number of malformed records).

    The format is sniffed from the first non-blank character ('[' = JSON list, anything else = JSONL), so the file
    extension does not matter. ``validate(obj)`` returns the record to keep or raises ValueError/KeyError/TypeError
    to reject it. Blank JSONL lines are ignored (not malformed).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"dataset file not found: {path}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    stripped = text.lstrip()
    if not stripped:
        raise ValueError(f"dataset file is empty: {path}")

    if stripped[0] == "[":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"dataset file {path} is not valid JSON: {e}") from e
        entries = [(f"item {i}", obj, None) for i, obj in enumerate(items)]
    else:
        entries = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entries.append((f"line {lineno}", json.loads(line), None))
            except json.JSONDecodeError as e:
                entries.append((f"line {lineno}", None, f"invalid JSON ({e.msg})"))

    records, malformed = [], 0
    for where, obj, error in entries:
        if error is None:
            try:
                records.append(validate(obj))
                continue
            except (ValueError, KeyError, TypeError) as e:
                error = str(e) or type(e).__name__
        malformed += 1
        logger.warning("skipping malformed record at %s:%s: %s", path, where, error)

    if not records:
        raise ValueError(f"dataset file {path} has no usable records ({malformed} malformed of {len(entries)})")
    return records, malformed
