"""The packaged stage recipes and DeepSpeed configs: lookup, errors, and a real wheel that carries them."""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

import longvila
from longvila.stages import STAGES
from longvila.config import DataArguments, ModelArguments, load_recipe, parse_stage_args
from longvila.errors import ConfigError
from longvila.engine.activation_offload import checkpointing_mode
from longvila.engine.deepspeed_config import build_deepspeed_config, zero_stage
from longvila.recipes import deepspeed_config_names, deepspeed_config_path, recipe_names, recipe_path

REPO = Path(__file__).resolve().parents[2]


def test_every_stage_has_a_packaged_recipe():
    assert recipe_names() == sorted(STAGES)
    assert deepspeed_config_names() == ["zero2", "zero2_offload", "zero3", "zero3_offload"]


@pytest.mark.parametrize("stage", STAGES)
def test_stage_recipe_loads_and_supplies_defaults(stage, tmp_path):
    path = recipe_path(stage)
    assert path.is_file() and path.parent == Path(longvila.__file__).parent / "recipes"
    recipe = load_recipe(path)
    assert recipe, f"{stage}: empty recipe"
    args = parse_stage_args(stage, ["--output_dir", str(tmp_path)])
    assert args.recipe == path
    values = {**vars(args.model), **vars(args.data), **vars(args.train)}
    if "gradient_checkpointing" in recipe:  # a YAML bool, normalised to the flag's mode name
        recipe["gradient_checkpointing"] = checkpointing_mode(recipe["gradient_checkpointing"])
    assert {key: values[key] for key in recipe} == recipe


@pytest.mark.parametrize("name, stage", [("zero2", 2), ("zero3", 3), ("zero2.json", 2), ("zero3.json", 3)])
def test_packaged_deepspeed_config_by_name(name, stage, tmp_path):
    path = deepspeed_config_path(name)
    assert path.parent == recipe_path("s1_align").parent
    assert zero_stage(json.loads(path.read_text())) == stage
    args = parse_stage_args("s1_align", ["--output_dir", str(tmp_path), "--deepspeed", name])
    assert zero_stage(build_deepspeed_config(args.train, world_size=1, bf16=False)) == stage


def test_default_deepspeed_config_is_packaged_zero2(tmp_path):
    assert deepspeed_config_path(None) == deepspeed_config_path("zero2")
    args = parse_stage_args("s1_align", ["--output_dir", str(tmp_path)])
    assert zero_stage(build_deepspeed_config(args.train, world_size=1, bf16=False)) == 2


def test_deepspeed_file_path_wins_over_packaged_name(tmp_path, monkeypatch):
    own = tmp_path / "zero3"
    own.write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    monkeypatch.chdir(tmp_path)
    assert deepspeed_config_path("zero3") == Path("zero3")
    args = parse_stage_args("s1_align", ["--output_dir", str(tmp_path), "--deepspeed", str(own)])
    assert zero_stage(build_deepspeed_config(args.train, world_size=1, bf16=False)) == 1


@pytest.mark.parametrize("value", ["zero4", "stages/zero3.json", "/nonexistent/ds.json"])
def test_unknown_deepspeed_is_one_line_config_error(value, tmp_path):
    with pytest.raises(ConfigError, match=r"--deepspeed .*no packaged config of that name \(packaged: zero2, zero2_offload, zero3, zero3_offload\)") \
            as error:
        parse_stage_args("s1_align", ["--output_dir", str(tmp_path), "--deepspeed", value])
    assert "\n" not in str(error.value)


def test_stage_without_its_recipe_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no packaged recipe for stage 's9_missing'") as error:
        parse_stage_args("s9_missing", ["--output_dir", str(tmp_path)])
    assert "\n" not in str(error.value)


def test_recipe_flag_names_a_file(tmp_path):
    own = tmp_path / "mine.yaml"
    own.write_text("rope_theta: 5.0e+5\nmodel_max_length: 1024\n")
    args = parse_stage_args("s4_context_ext", ["--recipe", str(own), "--output_dir", str(tmp_path)])
    assert (args.recipe, args.model.rope_theta, args.data.model_max_length) == (own, 5.0e5, 1024)
    with pytest.raises(ConfigError, match="recipe not found"):
        parse_stage_args("s4_context_ext", ["--recipe", str(tmp_path / "absent.yaml"), "--output_dir", str(tmp_path)])


WHEEL_PROBE = """
import json, sys
from pathlib import Path
import longvila
from longvila.config import parse_stage_args
from longvila.engine.activation_offload import checkpointing_mode
from longvila.engine.deepspeed_config import build_deepspeed_config, zero_stage
from longvila.recipes import deepspeed_config_path
args = parse_stage_args("s4_context_ext", ["--output_dir", sys.argv[1]])
zero3 = parse_stage_args("s4_context_ext", ["--output_dir", sys.argv[1], "--deepspeed", "zero3"])
print(json.dumps({
    "package": longvila.__file__, "recipe": str(args.recipe),
    "rope_theta": args.model.rope_theta, "model_max_length": args.data.model_max_length,
    "default_deepspeed": str(deepspeed_config_path(args.train.deepspeed)),
    "default_stage": zero_stage(build_deepspeed_config(args.train, 1, False)),
    "zero3_stage": zero_stage(build_deepspeed_config(zero3.train, 1, False)),
}))
"""


def _build_wheel(tmp_path: Path) -> Path:
    """Build from a copy of the sources: an in-tree build would write build/ and egg-info into the shared checkout."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "longvila", source / "longvila", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                    "--no-index", "-w", str(dist)], check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = dist.glob("longvila-*.whl")
    return wheel


@pytest.mark.slow
def test_wheel_install_carries_and_uses_the_recipes(tmp_path, subprocess_env):
    """A non-editable install (no source tree) finds stage 4's recipe and the DeepSpeed configs, and trains with them.

    The editable install's finder is a meta-path hook that runs *after* the normal path search, so PYTHONPATH=site
    wins over it; the child asserts that by checking where ``longvila`` was imported from. The children run outside
    the repository, so the checkout is not on their path either.
    """
    wheel = _build_wheel(tmp_path)
    packaged = {f"longvila/recipes/{stage}.yaml" for stage in STAGES} | {
        f"longvila/recipes/{name}.json" for name in ("zero2", "zero2_offload", "zero3", "zero3_offload")}
    with zipfile.ZipFile(wheel) as archive:
        assert packaged <= set(archive.namelist())

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, text=True, timeout=300)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = {**subprocess_env, "PYTHONPATH": str(site), "LONGVILA_HOME": str(tmp_path / "home")}
    probe = subprocess.run([sys.executable, "-c", WHEEL_PROBE, str(run_dir / "probe")], cwd=run_dir, env=env,
                           capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    seen = json.loads(probe.stdout.strip().splitlines()[-1])
    recipe = yaml.safe_load((REPO / "longvila" / "recipes" / "s4_context_ext.yaml").read_text())
    assert Path(seen["package"]).is_relative_to(site), seen["package"]
    assert seen["recipe"] == str(site / "longvila" / "recipes" / "s4_context_ext.yaml")
    assert recipe["rope_theta"] != ModelArguments().rope_theta
    assert recipe["model_max_length"] != DataArguments().model_max_length
    assert (seen["rope_theta"], seen["model_max_length"]) == (recipe["rope_theta"], recipe["model_max_length"])
    assert seen["default_deepspeed"] == str(site / "longvila" / "recipes" / "zero2.json")
    assert (seen["default_stage"], seen["zero3_stage"]) == (2, 3)

    out = run_dir / "s4"
    stage = subprocess.run([sys.executable, "-m", "longvila.stages.s4_context_ext", "--output_dir", str(out),
                            "--max_steps", "1", "--model_max_length", "256", "--disable_tqdm", "true"],
                           cwd=run_dir, env=env, capture_output=True, text=True, timeout=600)
    log = stage.stdout + stage.stderr
    assert stage.returncode == 0, log[-3000:]
    assert f"recipe {site / 'longvila' / 'recipes' / 's4_context_ext.yaml'}; " \
           f"DeepSpeed config {site / 'longvila' / 'recipes' / 'zero2.json'}" in log
    llm_config = json.loads((out / "llm" / "config.json").read_text())
    assert llm_config["rope_parameters"]["rope_theta"] == recipe["rope_theta"]
    assert json.loads((out / "config.json").read_text())["model_max_length"] == 256
