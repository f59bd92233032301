"""The stage-5 synthetic data the embedded default learns the needle task from (clips of varying length)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from longvila.config import parse_stage_args
from longvila.data.synthetic import STAGE_DEFAULTS, make_video_data


def test_varying_length_clips_show_one_needle_each_at_the_recipe_fps(tmp_path, tiny_path):
    from transformers import AutoTokenizer

    from longvila.data.datasets import ConversationDataset
    from longvila.model.tiny import tiny_image_processor

    path = make_video_data(tmp_path, 12, num_frames=10, min_frames=1, size=32, seed=1)
    assert path.name == "videos_n12_f1-10_seed1_32px.json"
    records = json.loads(path.read_text())
    lengths = [r["num_frames"] for r in records]
    assert min(lengths) >= 1 and max(lengths) <= 10 and len(set(lengths)) > 3
    assert all(0 <= r["needle_frame"] < r["num_frames"] for r in records)
    recipe = parse_stage_args("s5_long_video_sft", ["--output_dir", str(tmp_path / "o")]).data
    dataset = ConversationDataset(path, AutoTokenizer.from_pretrained(tiny_path / "llm"), tiny_image_processor(),
                                  num_video_frames=recipe.num_video_frames, fps=recipe.fps)
    for index, record in enumerate(records):
        (video,) = dataset[index]["media"]
        assert video.shape[0] == record["num_frames"]  # every frame once: no repeats, no needle dropped
        spread = (video - video.mean(dim=(0, 2, 3), keepdim=True)).abs().amax(dim=(1, 2, 3)).numpy()
        if record["num_frames"] > 1:
            assert int(np.argmax(spread)) == record["needle_frame"]
    # the fixed-length form is unchanged (same files and names as before the extension)
    fixed = json.loads(make_video_data(tmp_path / "fixed", 2, num_frames=4, size=32).read_text())
    assert [r["num_frames"] for r in fixed] == [4, 4]
    with pytest.raises(ValueError, match="min_frames"):
        make_video_data(tmp_path, 2, num_frames=4, min_frames=5)


def test_stage5_defaults_and_recipe_agree():
    make, defaults = STAGE_DEFAULTS["s5_long_video_sft"]
    assert make is make_video_data and defaults["min_frames"] == 1 and defaults["num_frames"] == 32
    args = parse_stage_args("s5_long_video_sft", ["--output_dir", str(Path("unused"))])
    assert args.data.num_video_frames == defaults["num_frames"]
    assert args.data.fps == 8  # = make_video_data's fps: each clip yields its own frames, once

