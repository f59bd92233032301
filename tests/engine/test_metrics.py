import pytest
import torch

from longvila.engine.metrics import METRIC_KEYS, MetricsLogger, max_memory_gb, read_metrics


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


def test_cpu_peak_memory_is_plausible():
    assert 0.01 < max_memory_gb(torch.device("cpu")) < 64
