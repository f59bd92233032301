"""Bad data at scale: a stage-5 dataset with 30% broken videos trains to the end on 2 ranks (SP=2), counts every
broken video exactly once, and trains on every good one exactly once per epoch."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from longvila.data import synthetic
from longvila.engine.metrics import read_metrics
from tests.stages.sample_logs import read_sample_logs

N_VIDEOS = 20


def broken_dataset(root: Path) -> tuple[Path, set[int], set[int]]:
    """20 real clips, of which 6 are made bad: 2 missing, 2 truncated to half, 1 zero-byte, 1 not a video."""
    data = synthetic.make_video_data(root / "videos", N_VIDEOS, 6)
    records = json.loads(data.read_text())
    media = data.parent
    breakers = {
        1: lambda path: path.unlink(),
        4: lambda path: path.unlink(),
        7: lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
        10: lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
        13: lambda path: path.write_bytes(b""),
        16: lambda path: path.write_text("this is a caption file, not a video\n" * 40),
    }
    for index, breaker in breakers.items():
        breaker(media / records[index]["video"])
    return data, set(range(N_VIDEOS)) - set(breakers), set(breakers)


@pytest.mark.slow
def test_thirty_percent_bad_videos_are_counted_once_and_no_good_one_is_lost(stage_flags, subprocess_env, tmp_path):
    data, good, bad = broken_dataset(tmp_path)
    steps = len(good) + 1  # batch 1: the first epoch's last position is drawn by then, good or bad
    flags = stage_flags("s5_long_video_sft", tmp_path / "out", "--max_steps", str(steps), "--log_sample_ids", "true",
                        "--per_device_train_batch_size", "1", "--seq_parallel_size", "2")
    flags[flags.index("--data_path") + 1] = str(data)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "longvila.stages.s5_long_video_sft", *flags]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=subprocess_env)
    assert result.returncode == 0, result.stderr[-3000:]

    logs = read_sample_logs(tmp_path / "out")
    assert sorted(logs) == list(range(1, steps + 1))
    trained = [i for step in sorted(logs) for i in logs[step]["ids"]]
    skipped = [i for step in sorted(logs) for i in logs[step]["skipped"]]
    assert sorted(trained[: len(good)]) == sorted(good)  # the first epoch: every good clip once, in draw order
    assert set(skipped[: len(bad)]) == bad and len(skipped[: len(bad)]) == len(bad)
    assert set(skipped) <= bad and set(trained) <= good
    records = read_metrics(tmp_path / "out")
    # once per data-parallel group, though both SP ranks of the group skipped each one
    assert records[-1]["skipped_samples"] == len(skipped)
    running = 0
    for record in records:
        running += len(logs[record["step"]]["skipped"])
        assert record["skipped_samples"] == running
