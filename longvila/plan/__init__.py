"""Planning a run before booking the GPUs: predicted memory and step time for a model, a length and a cluster.

``plan(PlanRequest(...))`` searches the layouts and open choices and returns a ``Plan`` (best run, its memory
breakdown and step time, the longest sample that fits, every ruled-out layout with its reason, the launch
command); ``longvila plan`` (``longvila.plan.cli``) prints it. The memory terms are checked against measured
runs by ``benchmarks/plan_accuracy.py``.
"""

from longvila.plan.hardware import GPU_PRESETS, Device, cpu_device, resolve_device
from longvila.plan.planner import Plan, PlanRequest, plan

__all__ = ["GPU_PRESETS", "Device", "Plan", "PlanRequest", "cpu_device", "plan", "resolve_device"]
