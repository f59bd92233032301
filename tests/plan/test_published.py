"""The planner's verdict on published runs: each fits its stated hardware, LongVILA's two layout traps (SP 28 on 256
GPUs, SP 14 with Qwen2-7B's 4 kv heads) are flagged with the trainer's own reason, and where a run reports its own
peak memory, the planner's verdict on every GPU preset agrees with what that number says."""

from dataclasses import replace

import pytest

from longvila.plan.hardware import GPU_PRESETS
from longvila.plan.published import PUBLISHED_RUNS, plan_published


@pytest.mark.parametrize("run", PUBLISHED_RUNS, ids=lambda run: run.name.split(":")[0] + " " + run.hardware)
def test_published_run(run):
    result = plan_published(run)
    assert result.fits == run.fits, (result.best.problems if result.best else None)
    if run.fits:
        chosen = result.best
        assert chosen.layout.sp == run.request.get("seq_parallel_size", chosen.layout.sp)
        assert chosen.memory.peak_gib <= result.request.rank_budget_gib
        assert result.max_tokens >= result.workload.tokens
    else:
        reasons = [problem for candidate in result.rejected for problem in candidate.problems]
        assert any(run.flagged in reason for reason in reasons), reasons
        assert result.alternative is not None and result.alternative.fits  # and a layout that does run
    assert result.command() is not None


REPORTED = [run for run in PUBLISHED_RUNS if run.reported_peak_gib is not None]


def test_a_published_run_reports_its_own_peak():
    assert REPORTED, "no published run with its own peak memory: the verdict check below would check nothing"


@pytest.mark.parametrize("device", sorted(GPU_PRESETS))
@pytest.mark.parametrize("run", REPORTED, ids=lambda run: run.name.split(",")[0])
def test_verdict_agrees_with_the_runs_own_peak(run, device):
    """ArcticTraining's ``projects/sequence-parallelism/run-h200-sp1-llama-8b-liger-offload-tiled-mlp.yml``
    (snowflakedb/ArcticTraining at 2771b4b) records ``max_length: 1_200_000 # ok 136.15 GB``: Llama-3.1-8B at 1.2M
    tokens on one H200 with ZeRO-3, optimizer and weights offloaded, checkpoints offloaded and tiled MLP. The planner
    plans our trainer at the same model, length and choices, not ALST's stack (its Liger loss and FlashAttention-3
    are not ours), so its peak need not equal 136.15 GiB; but its verdict must agree with what that number says on
    each GPU preset: such a run fits the H200 (136.8 GiB usable) and does not fit an 80 GB part (76.2 GiB usable).
    A planner peak below 76.2 or above 136.8 GiB fails here."""
    request = dict(run.request, device=device)
    result = plan_published(replace(run, request=request))
    published_fits = run.reported_peak_gib <= result.request.rank_budget_gib
    predicted = result.best.memory.peak_gib if result.best and result.best.memory else None
    assert result.fits == published_fits, (device, run.reported_peak_gib, predicted,
                                           result.request.rank_budget_gib)
