import sys

import pytest
import torch

from longvila.engine.metrics import (
    METRIC_KEYS,
    MetricsLogger,
    PeakMemoryWindows,
    max_memory_gb,
    read_metrics,
    reset_peak_memory,
)


def record(step, loss):
    return {key: 0.0 for key in METRIC_KEYS} | {"step": step, "loss": loss}


def test_jsonl_and_tensorboard_and_resume_truncation(tmp_path):
    logger = MetricsLogger(tmp_path, enabled=True)
    for step in range(1, 5):
        logger.log(record(step, 1.0 / step))
    logger.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    resumed = MetricsLogger(tmp_path, enabled=True, resume_step=2)
    resumed.log(record(3, 0.5))
    resumed.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [(1, 1.0), (2, 0.5), (3, 0.5)]


def test_incomplete_record_is_rejected(tmp_path):
    with pytest.raises(KeyError, match="grad_norm"):
        MetricsLogger(tmp_path, enabled=True).log({"step": 1, "loss": 1.0})


DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not sys.platform.startswith("linux"),
                                                 reason="the resident-set peak resets on Linux only")),
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                    reason="needs a CUDA device")]),
]


@pytest.mark.parametrize("device", DEVICES)
def test_peak_memory_grows_by_a_known_allocation(device):
    """A 512 MiB tensor made inside a fresh peak window raises the reported peak by 0.5 GiB: a wrong unit (ru_maxrss
    is KiB on Linux, bytes on macOS), a peak that is not this process's, or one that does not follow allocations
    would miss that by far more than the tolerance (the resident-set peak moves by page-level noise; the CUDA
    allocator's peak by exactly the tensor)."""
    device = torch.device(device)
    assert reset_peak_memory(device)
    before = max_memory_gb(device)
    block = torch.ones(2**27, device=device)  # 2**27 fp32 = 0.5 GiB, every page written
    grown = max_memory_gb(device) - before
    del block
    if device.type == "cuda":
        assert grown == pytest.approx(0.5, abs=1e-6), grown
    else:
        assert 0.45 < grown < 0.6, (before, grown)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the resident-set peak resets on Linux only")
def test_peak_window_resets_so_a_step_is_measured_apart_from_loading():
    cpu = torch.device("cpu")
    big = torch.ones(2**28)  # 1 GiB resident
    big.add_(1.0)
    before = max_memory_gb(cpu)
    del big
    assert reset_peak_memory(cpu)
    small = torch.ones(2**26)  # 0.25 GiB
    small.add_(1.0)
    after = max_memory_gb(cpu)
    assert after < before - 0.5, (before, after)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the resident-set peak resets on Linux only")
def test_step_windows_keep_the_run_peak_and_each_step_its_own():
    windows = PeakMemoryWindows(torch.device("cpu"))
    windows.begin_step()
    big = torch.ones(2**28)  # a 1 GiB step
    big.add_(1.0)
    run_1, step_1 = windows.end_step()
    del big
    windows.begin_step()
    small = torch.ones(2**26)  # a 0.25 GiB step
    small.add_(1.0)
    run_2, step_2 = windows.end_step()
    assert step_2 < step_1 - 0.5, (step_1, step_2)
    assert run_2 >= run_1 >= step_1  # the run keeps the larger step (and whatever came before)
