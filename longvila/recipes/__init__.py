"""Where the stage recipes (``<stage>.yaml``) and DeepSpeed configs (``zero2.json``, ``zero3.json``) are found.

They live in this package and ship as package data (``[tool.setuptools.package-data]`` in pyproject.toml), and are
located through :mod:`importlib.resources`, so a wheel install finds them exactly as a source checkout does. A path
computed from ``__file__`` up to the repository root would exist only in a checkout: a wheel would then train stage 4
without its ``rope_theta`` and ``model_max_length``.

Missing files raise :class:`FileNotFoundError` with a one-line message; :mod:`longvila.config` turns it into a
``ConfigError`` (this module sits below the configuration code, so it cannot import it).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEFAULT_DEEPSPEED = "zero2"
"""Packaged DeepSpeed config used when ``--deepspeed`` is not given (ZeRO-2)."""


def _packaged(filename: str) -> Path:
    """A file of this package as a filesystem path (longvila is installed as files: torch cannot import from a zip)."""
    entry = resources.files(__name__).joinpath(filename)
    if not entry.is_file():
        raise FileNotFoundError(f"{filename} is not packaged in {__name__}")
    return Path(str(entry))


def _packaged_stems(suffix: str) -> list[str]:
    return sorted(entry.name[: -len(suffix)] for entry in resources.files(__name__).iterdir()
                  if entry.name.endswith(suffix) and entry.is_file())


def recipe_names() -> list[str]:
    """Stages that have a packaged recipe."""
    return _packaged_stems(".yaml")


def recipe_path(stage: str) -> Path:
    """The packaged recipe of ``stage``; a stage without one is an error, never an empty recipe."""
    try:
        return _packaged(f"{stage}.yaml")
    except FileNotFoundError:
        raise FileNotFoundError(f"no packaged recipe for stage {stage!r} (packaged: {', '.join(recipe_names())})") \
            from None


def deepspeed_config_names() -> list[str]:
    """Names of the packaged DeepSpeed configs, as ``--deepspeed`` accepts them."""
    return _packaged_stems(".json")


def deepspeed_config_path(name_or_path: str | None = None) -> Path:
    """Resolve ``--deepspeed``: an existing file, else a packaged name (``zero3`` or ``zero3.json``).

    Users of a wheel have no source tree to point at, so the packaged configs are reachable by name; a file of the
    same name in the working directory wins, because that is what the user typed.
    """
    value = str(name_or_path) if name_or_path else DEFAULT_DEEPSPEED
    if Path(value).is_file():
        return Path(value)
    name = value[: -len(".json")] if value.endswith(".json") else value
    if name in deepspeed_config_names():
        return _packaged(f"{name}.json")
    raise FileNotFoundError(f"--deepspeed {value}: no such file and no packaged config of that name "
                            f"(packaged: {', '.join(deepspeed_config_names())})")
