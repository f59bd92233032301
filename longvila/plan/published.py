"""Published long-context training runs, as plan requests, with what the planner must say about each.

The runs are data (``published_runs.json`` beside this module); settings are read from the runs' own scripts and
configs (sources given per run). Where a run used something longvila does not have, the closest packaged choice is
left to the search (no ``deepspeed`` in its request) and its name says so: ALST offloads the optimizer with ZeRO-3
while keeping the weights on the GPU, which no packaged config does. A100 runs whose memory size is
not stated are taken as the 80 GB part. A run whose source reports its own peak memory records it
(``reported_peak_gib``), so the planner's verdict is checked against the run's number, not only against ours.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources


@dataclass(frozen=True)
class PublishedRun:
    name: str
    source: str
    hardware: str
    request: dict = field(default_factory=dict)
    """``PlanRequest`` fields; ``device`` is a preset name."""
    fits: bool = True
    """Whether the run as published can start and fit; False where the published layout breaks a rule."""
    flagged: str | None = None
    """A phrase the planner's reasons must contain for a layout that cannot run."""
    reported_peak_gib: float | None = None
    """The peak memory per GPU the run's own source reports for it, where it reports one (GiB: DeepSpeed's and
    ArcticTraining's memory logs divide by 2**30 and print "GB")."""


def load_published_runs() -> tuple[PublishedRun, ...]:
    """The runs in ``published_runs.json`` (package data beside this module), in file order."""
    rows = json.loads(resources.files(__package__).joinpath("published_runs.json").read_text())
    return tuple(PublishedRun(**row) for row in rows)


PUBLISHED_RUNS = load_published_runs()


def plan_published(run: PublishedRun):
    """The planner's answer for a published run (a ``Plan``)."""
    from longvila.plan.hardware import resolve_device
    from longvila.plan.planner import PlanRequest, plan

    fields = dict(run.request)
    return plan(PlanRequest(device=resolve_device(fields.pop("device")), **fields))
