"""Stage 1 from an HF Qwen2 folder + a full SiglipModel folder, then the pipeline through stage 5 from there."""

import json
import subprocess
import sys

import pytest

from longvila.cli import START_FLAGS, run_pipeline, stage_spec, without_flags
from tests.hf_parts import write_hf_parts
from tests.stages.conftest import STAGE_DATA


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return write_hf_parts(tmp_path_factory.mktemp("parts"))


@pytest.mark.slow
def test_stage1_from_parts_then_pipeline_to_stage5(parts, stage_data, tmp_path):
    llm_dir, siglip_dir = parts
    start = ["--model_name_or_path", str(llm_dir), "--vision_tower", str(siglip_dir), "--mm_projector",
             "mlp_downsample", "--mm_vision_select_layer", "-2", "--mm_vision_select_feature", "cls_patch",
             "--chat_template", "qwen2"]
    common = ["--max_steps", "1", "--per_device_train_batch_size", "2", "--disable_tqdm", "true",
              "--num_video_frames", "4", "--model_max_length", "256"]
    summary = []
    for i, stage in enumerate(("s1_align", "s2_pretrain", "s3_sft", "s4_context_ext", "s5_long_video_sft")):
        flags = ["--data_path", str(stage_data[STAGE_DATA[stage]]), *common]
        if i == 0:
            summary += run_pipeline(tmp_path, flags + start, (stage,))
        else:
            summary += run_pipeline(tmp_path, flags, (stage,), init_from=str(tmp_path / previous))
        previous = stage
    assert [row["steps"] for row in summary] == [1] * 5
    s1 = json.loads((tmp_path / "s1_align" / "config.json").read_text())
    assert s1["tune_mm_projector"] and not s1["tune_language_model"] and not s1["tune_vision_tower"]
    assert s1["mm_projector_cfg"]["mm_projector_type"] == "mlp_downsample"
    assert s1["resume_path"] == str((tmp_path / "s1_align").resolve())
    s5 = json.loads((tmp_path / "s5_long_video_sft" / "config.json").read_text())
    assert s5["resume_path"] == str((tmp_path / "s5_long_video_sft").resolve())  # fresh, not carried over


def test_start_flags_go_to_the_first_stage_only():
    argv = ["--max_steps", "1", "--model_name_or_path", "L", "--vision_tower=V", "--chat_template", "qwen2", "-x"]
    assert without_flags(argv, START_FLAGS) == ["--max_steps", "1", "-x"]


@pytest.mark.parametrize("flags,says", [
    (lambda llm, vt: ["--init_from", str(llm)], "HF causal LM folder (qwen2), not a VILA-layout checkpoint: pass "
                                                "it as --model_name_or_path"),
    (lambda llm, vt: ["--model_name_or_path", str(vt), "--vision_tower", str(vt)], "pass it as --vision_tower"),
    (lambda llm, vt: ["--model_name_or_path", str(llm)], "--model_name_or_path and --vision_tower go together"),
    (lambda llm, vt: ["--model_name_or_path", str(llm), "--vision_tower", str(vt), "--mm_projector", "mlp_fix"],
     "unknown mm_projector_type 'mlp_fix'"),
])
def test_wrong_folder_kinds_are_one_line_errors(parts, subprocess_env, tmp_path, flags, says):
    result = subprocess.run([sys.executable, "-m", "longvila.stages.s1_align", "--output_dir", str(tmp_path / "o"),
                             *flags(*parts)], capture_output=True, text=True, env=subprocess_env, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr


def test_stage_spec_known():
    assert stage_spec("s1_align").trains == frozenset({"mm_projector"})
