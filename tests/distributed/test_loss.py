"""Global loss normalisation: DP x SP x grad-accum gradients equal the single-process gradient."""

import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from longvila.constants import IGNORE_INDEX
from longvila.distributed.loss import mean_loss, normalised_loss
from longvila.engine.step_metrics import StepReductions


def test_normalised_loss_scale_and_empty_steps():
    s = torch.tensor(6.0, requires_grad=True)
    assert normalised_loss(s, 12, 4, 2).item() == pytest.approx(6.0 * 4 * 2 / 12)
    empty = normalised_loss(torch.zeros((), requires_grad=True), 0, 4)
    assert empty.item() == 0.0 and not math.isnan(empty.item())
    empty.backward()
    with pytest.raises(ValueError):
        normalised_loss(s, 3, 0)
    with pytest.raises(ValueError):
        normalised_loss(s, -1, 1)


def test_single_process_count_without_dist():
    if dist.is_initialized():
        pytest.skip("process group initialised in this process")
    assert mean_loss(10.0, 4) == 2.5 and mean_loss(0.0, 0) == 0.0


def _data(gen, n_micro, world):
    """Per (micro-batch, rank) tokens with uneven supervision; rank 3 has none in micro-batch 0."""
    data = []
    for m in range(n_micro):
        row = []
        for r in range(world):
            length = 3 + 2 * r + m
            hidden = torch.randn(length, 5, generator=gen, dtype=torch.float64)
            labels = torch.randint(0, 7, (length,), generator=gen)
            labels[torch.rand(length, generator=gen) < 0.4] = IGNORE_INDEX
            if (m, r) == (0, world - 1):
                labels[:] = IGNORE_INDEX
            row.append((hidden, labels))
        data.append(row)
    return data


def _ce_sum(weight, hidden, labels):
    return F.cross_entropy(hidden @ weight.T, labels, ignore_index=IGNORE_INDEX, reduction="sum")


def _deepspeed_like_step(rank, world, gas):
    gen = torch.Generator().manual_seed(5)
    weight0 = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    data = _data(gen, gas, world)
    # Single process: mean CE over every supervised token of the global batch.
    w_ref = weight0.clone().requires_grad_()
    total = sum(_ce_sum(w_ref, h, l) for row in data for h, l in row)
    count = sum(int((l != IGNORE_INDEX).sum()) for row in data for _, l in row)
    (total / count).backward()

    # This rank: count the whole step first, then backprop each micro-batch as the engine hands it to DeepSpeed.
    local_count = sum(int((data[m][rank][1] != IGNORE_INDEX).sum()) for m in range(gas))
    reductions = StepReductions(torch.device("cpu"))  # the trainer's counting: one DP group per rank here
    (global_count,) = reductions.sum_over_replicas([local_count])
    assert global_count == count
    w = weight0.clone().requires_grad_()
    sums = []
    for m in range(gas):
        loss_sum = _ce_sum(w, *data[m][rank])
        loss = normalised_loss(loss_sum, global_count, world, gas)
        assert torch.isfinite(loss)
        if (m, rank) == (0, world - 1):
            assert loss.item() == 0.0  # a rank with nothing supervised contributes exactly 0
        (loss / gas).backward()  # DeepSpeed's scale_wrt_gas
        sums.append(loss_sum.detach())
    grad = w.grad.clone()
    dist.all_reduce(grad)
    grad /= world  # DeepSpeed averages gradients over its data-parallel world
    torch.testing.assert_close(grad, w_ref.grad, atol=1e-12, rtol=0)
    (loss_sum_total,) = reductions.sum_over_shards([float(torch.stack(sums).sum())])
    logged = mean_loss(loss_sum_total, global_count)
    assert logged == pytest.approx((total / count).item(), rel=1e-12)
    return True


@pytest.mark.parametrize("gas", [1, 2])
def test_distributed_gradient_equals_single_process(world4, gas):
    world4.run(_deepspeed_like_step, gas)
