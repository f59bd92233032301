"""The planner's verdict on published runs: each fits its stated hardware, and LongVILA's two layout traps (SP 28
on 256 GPUs, SP 14 with Qwen2-7B's 4 kv heads) are flagged with the trainer's own reason."""

import pytest

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
