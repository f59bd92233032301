"""The five stages, in recipe order; each is a module here that declares its ``SPEC`` (``common.StageSpec``).

The list lives here, not in the console script, so the planner and the tests can name stages without importing
the command line (which imports the planner).
"""

from __future__ import annotations

import importlib

from longvila.errors import ConfigError

STAGES = ("s1_align", "s2_pretrain", "s3_sft", "s4_context_ext", "s5_long_video_sft")


def stage_spec(name: str):
    """The ``StageSpec`` of stage ``name`` (its module is imported on demand: stages load transformers)."""
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}; choose one of {', '.join(STAGES)}")
    return importlib.import_module(f"longvila.stages.{name}").SPEC
