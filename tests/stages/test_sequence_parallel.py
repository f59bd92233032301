"""Sequence-parallel training equals single-process training, loss for loss, for text (s4) and video (s5).

Every layout runs on 4 real gloo ranks under torchrun; the reference is one process on the same global
batch (SP ranks share a batch, so SP=4 compares with batch 1, SP=2 x DP=2 with batch 2). fp32 on CPU; every metric
column that is not a timing or memory measurement must agree: counts exactly (supervised tokens, real positions of
the expanded sequence, skipped samples, epoch), losses and grad norms to 1e-5 relative at every one of 10 steps.
Stage 5's samples each hold an image and a video, and its tower encodes 1-frame chunks recomputed in the backward.

The real-position count (``num_positions``, what ``tokens_per_sec`` divides by the step time) is also checked
against a count made from the batches the reference drew, apart from the model's sequence building and sharding:
every unpadded text token, and each placeholder as the positions its medium becomes.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from longvila.cli import stage_spec
from longvila.engine.dist import child_environment
from longvila.engine.metrics import METRIC_KEYS, read_metrics
from longvila.engine.prefetch import PrefetchingStream
from longvila.stages.common import run_stage

WORKER = Path(__file__).with_name("sp_equivalence_worker.py")
STEPS = "10"
# Measurements of this run on this machine; every other column must equal the single process's.
MEASURED = {"tokens_per_sec", "step_seconds", "max_memory_gb", "step_peak_memory_gb", "data_seconds", "decode_seconds"}
EXACT = ("step", "num_tokens", "num_positions", "skipped_samples", "epoch")
sys.path.insert(0, str(WORKER.parent))
from sp_equivalence_worker import LAYOUTS, stage_flags  # noqa: E402


@pytest.fixture(scope="module")
def sp_runs(stage_data, mixed_media_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("sp-runs")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4", str(WORKER),
               str(root), str(stage_data["long_text"]), str(mixed_media_data), STEPS]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=child_environment())
    assert result.returncode == 0, result.stderr[-4000:]
    return root


def batch_positions(batch: dict, image_id: int, video_id: int, tokens_per_frame: int) -> int:
    """Real positions of one collated batch once its media are expanded, counted from the batch alone: each
    unpadded text token once, an ``<image>`` as its frame's tokens, a ``<video>`` as each frame's tokens and one
    newline (VILA's video layout)."""
    frames = batch.get("media_frames") or [[m.shape[0] for m in sample] for sample in batch["media"]]
    total = 0
    for row, mask, counts in zip(batch["input_ids"], batch["attention_mask"].bool(), frames):
        tokens = row[mask].tolist()
        kinds = [t for t in tokens if t in (image_id, video_id)]
        assert len(kinds) == len(counts), (kinds, counts)
        total += len(tokens) - len(kinds)
        total += sum(n * tokens_per_frame + (n if kind == video_id else 0) for kind, n in zip(kinds, counts))
    return total


@pytest.fixture(scope="module")
def media_shape():
    """(image id, video id, tokens per frame) of the default model the stages start from; tokens per frame are
    counted on the tower's and projector's output for one frame."""
    import torch

    from longvila.model.checkpoint import load_vila
    from longvila.model.tiny import tiny_model_path

    model, _, _ = load_vila(tiny_model_path())
    size = model.vision_tower.config.image_size
    with torch.no_grad():
        features = model.encode_frames(torch.zeros(1, 3, size, size))
    return model.tokenizer_ids.image, model.tokenizer_ids.video, features.shape[1]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["s4_context_ext", "s5_long_video_sft"])
def test_every_layout_matches_single_process(stage, stage_data, mixed_media_data, sp_runs, media_shape, tmp_path,
                                             monkeypatch):
    references, drawn = {}, {}
    counted: list[int] = []
    load = PrefetchingStream.next_batch

    def counting(self):
        batch = load(self)
        counted.append(batch_positions(batch, *media_shape))
        return batch

    monkeypatch.setattr(PrefetchingStream, "next_batch", counting)
    data = stage_data["long_text"] if stage == "s4_context_ext" else mixed_media_data  # s5: image + video each
    for batch in (1, 2):
        flags = stage_flags(stage, str(data), tmp_path / f"single-b{batch}", STEPS)
        flags[flags.index("--per_device_train_batch_size") + 1] = str(batch)
        counted.clear()
        references[batch] = run_stage(stage_spec(stage), flags).history
        drawn[batch] = list(counted)  # one micro-batch per step
        assert len(drawn[batch]) == int(STEPS) and min(drawn[batch]) > 0, drawn[batch]
        assert [r["num_positions"] for r in references[batch]] == drawn[batch], batch
    for name in LAYOUTS:
        reference = references[2 if name == "sp2dp2" else 1]
        records = read_metrics(sp_runs / stage / name)
        assert len(records) == int(STEPS), name
        # Summed over the SP ranks (each counts its shard, the padding of the last one left out), the positions
        # are those of the global batch drawn, counted above from the data.
        assert [r["num_positions"] for r in records] == drawn[2 if name == "sp2dp2" else 1], name
        columns = set(records[0]) - MEASURED
        assert columns == set(reference[0]) - MEASURED and set(METRIC_KEYS) - MEASURED <= columns, name
        for key in EXACT:
            assert [r[key] for r in records] == [r[key] for r in reference], (name, key)
        for key, rel in (("loss", 1e-5), ("learning_rate", 1e-9), ("grad_norm", 1e-5)):
            got, want = [r[key] for r in records], [r[key] for r in reference]
            worst = max(abs(g - w) / max(abs(w), 1e-300) for g, w in zip(got, want))
            assert got == pytest.approx(want, rel=rel), (name, key, f"worst relative difference {worst:.2e}")
        assert set(columns) <= set(EXACT) | {"loss", "learning_rate", "grad_norm"}, name  # nothing left unchecked


@pytest.mark.slow
def test_bad_layout_is_one_line_error(stage_data, subprocess_env, tmp_path):
    """SP=4 on a world of 1 cannot be laid out; the run stops with one line before building anything."""
    flags = stage_flags("s4_context_ext", str(stage_data["long_text"]), tmp_path / "bad", "1")
    result = subprocess.run([sys.executable, "-m", "longvila.stages.s4_context_ext", *flags,
                             "--seq_parallel_size", "4"], capture_output=True, text=True, timeout=300,
                            env=subprocess_env)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("longvila")]
    assert lines == ["longvila s4_context_ext: error: world size 1 is not divisible by --seq_parallel_size 4"], \
        result.stderr[-2000:]
