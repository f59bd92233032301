"""Which datasets a stage trains on: ``--data_path a.json,b.jsonl`` or a ``--data_mixture`` YAML.

The YAML is a mapping with one key, ``datasets``, listing one mapping per dataset::

    datasets:
      - path: captions.jsonl          # required; relative paths resolve against the YAML's folder
        weight: 2                     # optional, default 1: passes over this dataset per mixture epoch
        media_root: /data/images      # optional, default --media_root, else the dataset file's folder
        name: coco                    # optional, default the file stem; the key of the per-source metrics

Why strict: a typo in a mixture (``wieght: 2``) would otherwise train on a different mixture than intended without a
word, so unknown keys, missing files, non-positive weights and duplicate names are refused. Every problem is one
line (ValueError here; ``longvila/config.py`` turns it into a ConfigError before any model is loaded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

ENTRY_KEYS = ("path", "weight", "media_root", "name")


@dataclass(frozen=True)
class SourceSpec:
    """One dataset of a mixture: where it is, how much of it an epoch draws, and what the metrics call it."""

    name: str
    path: Path
    weight: float = 1.0
    media_root: Optional[str] = None


def data_sources(data_path: Optional[str], data_mixture: Optional[str],
                 media_root: Optional[str] = None) -> list[SourceSpec]:
    """The datasets named by ``--data_path`` (comma list) or ``--data_mixture``; [] when neither is given."""
    if data_path is not None and data_mixture is not None:
        raise ValueError("--data_path and --data_mixture are exclusive; list every dataset in the mixture YAML")
    if data_mixture is not None:
        return read_mixture(data_mixture, media_root)
    if data_path is None:
        return []
    sources = []
    for entry in data_path.split(","):
        path = Path(entry.strip())
        if not entry.strip():
            raise ValueError(f"--data_path has an empty entry: {data_path!r}")
        if not path.is_file():
            raise ValueError(f"--data_path {'is not a file' if path.exists() else 'not found'}: {path}")
        sources.append(SourceSpec(path.stem, path, 1.0, media_root))
    _check_unique(sources, "--data_path", "use a --data_mixture YAML to give them distinct names")
    return sources


def read_mixture(mixture: str, media_root: Optional[str] = None) -> list[SourceSpec]:
    """Parse and check a mixture YAML (format in the module docstring)."""
    file = Path(mixture)
    where = f"--data_mixture {file}"
    if not file.is_file():
        raise ValueError(f"{where}: file not found")
    try:
        document = yaml.safe_load(file.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise ValueError(f"{where} is not valid YAML: {getattr(error, 'problem', None) or error}{line}") from None
    if not isinstance(document, dict) or set(document) != {"datasets"}:
        raise ValueError(f"{where} must be a mapping with exactly one key, 'datasets', listing the datasets")
    entries = document["datasets"]
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{where}: 'datasets' must be a non-empty list")
    sources = [_read_entry(entry, number, file.parent, where, media_root)
               for number, entry in enumerate(entries, start=1)]
    _check_unique(sources, where, "set 'name' on one of them")
    return sources


def _read_entry(entry, number: int, folder: Path, where: str, media_root: Optional[str]) -> SourceSpec:
    at = f"{where}: dataset {number}"
    if not isinstance(entry, dict):
        raise ValueError(f"{at} must be a mapping with keys {', '.join(ENTRY_KEYS)}, got {entry!r}")
    unknown = sorted(str(key) for key in set(entry) - set(ENTRY_KEYS))
    if unknown:
        raise ValueError(f"{at} has unknown keys: {', '.join(unknown)} (allowed: {', '.join(ENTRY_KEYS)})")
    if not isinstance(entry.get("path"), str) or not entry["path"].strip():
        raise ValueError(f"{at} needs a 'path' (a file name)")
    path = _resolve(entry["path"], folder)
    if not path.is_file():
        raise ValueError(f"{at}: {'not a file' if path.exists() else 'file not found'}: {path}")
    weight = entry.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"{at}: 'weight' must be a number > 0, got {weight!r}")
    name = entry.get("name", path.stem)
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{at}: 'name' must be a non-empty string, got {name!r}")
    root = entry.get("media_root")
    if root is not None:
        if not isinstance(root, str):
            raise ValueError(f"{at}: 'media_root' must be a folder path, got {root!r}")
        root = _resolve(root, folder)
        if not root.is_dir():
            raise ValueError(f"{at}: media_root is not a folder: {root}")
        root = str(root)
    return SourceSpec(name, path, float(weight), root if root is not None else media_root)


def _resolve(value: str, folder: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else folder / path


def _check_unique(sources: list[SourceSpec], where: str, hint: str) -> None:
    seen = set()
    for source in sources:
        if source.name in seen:
            raise ValueError(f"{where}: two datasets are named {source.name!r}; {hint}")
        seen.add(source.name)
