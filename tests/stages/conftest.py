"""Small synthetic datasets shared by the stage tests (generated once per session)."""

from pathlib import Path

import pytest

from longvila.data import synthetic


@pytest.fixture(scope="session")
def stage_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stage-data")
    return {
        "caption": Path(synthetic.make_caption_data(root / "caption", 24)),
        "instruction": Path(synthetic.make_instruction_data(root / "instruction", 24)),
        "long_text": Path(synthetic.make_long_text_data(root / "long_text", 12, 300)),
        "video": Path(synthetic.make_video_data(root / "video", 8, 6)),
    }


@pytest.fixture(scope="session")
def mixed_media_data(stage_data, tmp_path_factory) -> Path:
    """Stage-5 samples that each hold an image and a video (absolute paths): every batch mixes both kinds."""
    import json

    def records(path: Path) -> list[dict]:
        text = path.read_text()
        return json.loads(text) if text.lstrip().startswith("[") else [json.loads(l) for l in text.splitlines()]

    videos, images = records(stage_data["video"]), records(stage_data["caption"])
    mixed = [{**video, "id": f"mixed-{i}", "video": str(stage_data["video"].parent / video["video"]),
              "image": str(stage_data["caption"].parent / image["image"])}
             for i, (video, image) in enumerate(zip(videos, images))]
    path = tmp_path_factory.mktemp("mixed") / "image_and_video.json"
    path.write_text(json.dumps(mixed))
    return path


STAGE_DATA = {
    "s1_align": "caption",
    "s2_pretrain": "caption",
    "s3_sft": "instruction",
    "s4_context_ext": "long_text",
    "s5_long_video_sft": "video",
}


@pytest.fixture
def stage_flags(stage_data):
    """Builds the flags for a fast CPU run of a stage on the session's small datasets."""
    return lambda stage, output_dir, *extra: _stage_flags(stage, stage_data, output_dir, *extra)


def _stage_flags(stage: str, data: dict[str, Path], output_dir: Path, *extra: str) -> list[str]:
    flags = ["--output_dir", str(output_dir), "--data_path", str(data[STAGE_DATA[stage]]),
             "--max_steps", "2", "--per_device_train_batch_size", "2", "--disable_tqdm", "true",
             "--num_video_frames", "4", "--model_max_length", "512" if stage == "s4_context_ext" else "256"]
    return flags + list(extra)

