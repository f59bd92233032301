"""Plans that recommend a choice never run on a GPU say so: the offload paths (ZeRO optimizer/weight offload,
``--gradient_checkpointing offload``) that the planner picks for the published ALST and EasyContext runs are marked
"not yet run on a GPU" in the printed plan and in its JSON, from the one declared set
``longvila.plan.workload.NOT_YET_RUN_ON_GPU``."""

import json

import pytest

from longvila.plan.cli import main
from longvila.plan.published import PUBLISHED_RUNS, plan_published
from longvila.plan.report import format_plan, plan_json
from longvila.plan.workload import NOT_YET_RUN_ON_GPU

MARK = "not yet run on a GPU"
OFFLOAD_RUNS = [run for run in PUBLISHED_RUNS if run.name.startswith(("DeepSpeed ALST", "EasyContext"))]


def _offload_flags(choices) -> list[str]:
    """The chosen run's offload flags, read from the choices themselves (not through the code under test)."""
    flags = [f"--deepspeed {choices.deepspeed}"] if choices.deepspeed.endswith("_offload") else []
    return flags + (["--gradient_checkpointing offload"] if choices.checkpointing == "offload" else [])


def _declared(flags: list[str]) -> list[str]:
    """Those of ``flags`` still in the declared set (entries leave it once a GPU test covers them)."""
    return [flag for flag in flags if tuple(flag[2:].split(" ")) in NOT_YET_RUN_ON_GPU]


@pytest.mark.parametrize("run", OFFLOAD_RUNS, ids=lambda run: run.name.split(":")[0] + " " + run.hardware)
def test_published_offload_runs_are_marked(run):
    assert len(OFFLOAD_RUNS) >= 3  # the ALST runs and EasyContext's
    result = plan_published(run)
    chosen = result.best if result.fits else result.alternative
    offload = _offload_flags(chosen.choices)
    assert offload, f"the plan for {run.name} no longer offloads; this test needs a run that does"
    expected = _declared(offload)
    if not expected:
        pytest.skip(f"{offload} have run on a GPU (no longer in NOT_YET_RUN_ON_GPU)")
    text = format_plan(result)
    assert f"caution    {MARK}: {', '.join(expected)}" in text
    assert text.index("caution") < text.index("command")  # beside the layout, before the command to launch
    assert plan_json(result)["layout"]["not_yet_run_on_gpu"] == expected


def test_runs_without_offload_and_cpu_plans_are_not_marked(capsys):
    stage5 = next(run for run in PUBLISHED_RUNS if run.request.get("gpus") == 224 and
                  run.request.get("seq_parallel_size") == 28)
    result = plan_published(stage5)
    assert result.fits and not _offload_flags(result.best.choices)
    assert MARK not in format_plan(result) and plan_json(result)["layout"]["not_yet_run_on_gpu"] == []
    # On --device cpu the offload configs are what the CPU tests train, so a CPU plan carries no mark.
    with pytest.raises(SystemExit):
        main(["--model", "qwen2-1.5b", "--model_max_length", "2048", "--device", "cpu", "--gpu_memory_gb", "64",
              "--deepspeed", "zero2_offload", "--json"])
    layout = json.loads(capsys.readouterr().out)["layout"]
    assert layout["deepspeed"] == "zero2_offload" and layout["not_yet_run_on_gpu"] == []


def test_cli_marks_a_requested_offload_on_a_gpu(capsys):
    argv = ["--model", "qwen2-7b", "--model_max_length", "65536", "--gpus", "8", "--deepspeed", "zero3_offload",
            "--gradient_checkpointing", "offload"]
    with pytest.raises(SystemExit):
        main(argv)
    expected = _declared(["--deepspeed zero3_offload", "--gradient_checkpointing offload"])
    text = capsys.readouterr().out
    assert (f"{MARK}: {', '.join(expected)}" in text) if expected else MARK not in text
    with pytest.raises(SystemExit):
        main(argv + ["--json"])
    assert json.loads(capsys.readouterr().out)["layout"]["not_yet_run_on_gpu"] == expected
