"""Command-line and recipe arguments for every stage.

Flags follow HF ``TrainingArguments`` names (``--output_dir``, ``--max_steps`` ...) and VILA's names for
sequence parallelism, because those are what our users already type. A stage's YAML recipe (packaged in
:mod:`longvila.recipes`) supplies defaults; flags on the command line override them. Everything is validated
*before* any model is built, so a bad configuration costs one line of output, not a minute of loading.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml
from transformers import HfArgumentParser

from longvila.distributed.mesh import SequenceParallelConfig
from longvila.distributed.block_attention import ATTN_BACKENDS
from longvila.model.vlm import DEFAULT_VISION_CHUNK_FRAMES
from longvila.recipes import deepspeed_config_path, recipe_path as packaged_recipe_path
from longvila.errors import ConfigError, reported_as

LR_SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_min_lr")


def flag(default, help: str, **argparse_options):
    """A dataclass field that ``HfArgumentParser`` turns into a ``--flag`` with this help (and any extra
    ``add_argument`` options, e.g. ``nargs``/``const``/``choices``): defaults and help live beside the field."""
    return field(default=default, metadata={"help": help, **argparse_options})


@dataclass
class ModelArguments:
    init_from: Optional[str] = flag(None, "VILA-layout checkpoint folder to start from (any stage's output or a "
                                    "released VILA/LongVILA checkpoint). Default: the embedded tiny model.")
    model_name_or_path: Optional[str] = flag(None, "HF causal LM folder (Qwen2/Llama) to start from, with "
                                             "--vision_tower and a fresh --mm_projector (VILA's stage-1 start).")
    vision_tower: Optional[str] = flag(None, "HF SigLIP folder (SiglipVisionModel or a full SiglipModel).")
    mm_projector: str = flag("mlp_downsample", "Projector type for a fresh projector: linear | mlp{N}x_gelu | "
                             "mlp_downsample | mlp_downsample_2x2_fix | mlp_downsample_3x3_fix.")
    mm_vision_select_layer: int = flag(-2, "SigLIP hidden state the projector reads.")
    mm_vision_select_feature: str = flag("cls_patch", "cls_patch (SigLIP: all tokens).")
    chat_template: Optional[str] = flag(None, "qwen2 | llama3: chat template for an LLM folder whose tokenizer "
                                        "has none.")
    mm_projector_token_order: Optional[str] = flag(None, "row_major (VILA since Dec 2024) | column_major "
                                                   "(mlp_downsample checkpoints from 2024: VILA1.5, LongVILA-8B). "
                                                   "Default: what the checkpoint's mm_projector/config.json says, else "
                                                   "row_major.")
    rope_theta: Optional[float] = flag(None, "New RoPE base written into llm/config.json (stage 4).")
    lora_llm: bool = flag(False, "Train LoRA adapters on the LLM (merged at save).")
    lora_vision: bool = flag(False, "Put LoRA adapters on the vision tower.")
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    attn_backend: str = flag("auto", "auto (Triton on CUDA, torch elsewhere) | triton | flash_attn | torch | math "
                             "(the explicit O(S^2) reference)")
    loss_impl: str = flag("chunked", "chunked (default: never more than one chunk of logits) | naive (full logits; the "
                          "reference).")
    tiled_mlp_tokens: int = flag(4096, "Run each decoder MLP in tiles of this many tokens (recomputed in the backward) "
                                 "whenever a rank's sequence is longer; 0 turns tiling off.")
    fused_kernels: bool = flag(False, "Use the Triton RMSNorm / RoPE / chunked linear+CE kernels.")
    vision_chunk_frames: int = flag(DEFAULT_VISION_CHUNK_FRAMES, "The vision tower encodes a rank's frames this many "
                                    "at a time and recomputes each chunk in the backward, so its saved activations "
                                    "do not grow with frames; 0: one call, per-layer checkpoints kept.")


@dataclass
class DataArguments:
    data_path: Optional[str] = flag(None, "LLaVA-style JSON/JSONL (stages 1-3, 5) or long-text JSONL (stage 4); a "
                                    "comma list trains on all of them, one pass each. Default: synthetic data "
                                    "generated under --data_dir.")
    data_mixture: Optional[str] = flag(None, "YAML listing the stage's datasets with path, weight (passes per epoch), "
                                       "media_root, name (see longvila/data/mixture_spec.py); instead of --data_path.")
    media_root: Optional[str] = flag(None, "Folder that media paths are relative to.")
    data_dir: Optional[str] = flag(None, "Where synthetic data is generated. Default: <output_dir>/../data.")
    model_max_length: int = flag(2048, "Sequence length (tokens) per sample.")
    num_video_frames: int = flag(8, "Frames sampled uniformly from each video.")
    fps: Optional[float] = flag(None, "Cap on sampled frames per second of video.")
    dataloader_num_workers: int = flag(2, "Background threads that load and decode batches ahead of the step (each "
                                       "SP rank decodes only the frames it encodes); 0: load inline.")


@dataclass
class TrainArguments:
    output_dir: str = flag(None, "Where the checkpoint, metrics and logs go.")
    max_steps: int = flag(-1, "Optimizer steps; overrides --num_train_epochs.")
    num_train_epochs: float = 1.0
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    per_device_train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: str = flag("false", "true | false | offload (checkpoint every layer and keep the "
                                       "checkpointed inputs in host memory; CUDA only, the same results "
                                       "everywhere).", nargs="?", const="true")
    deepspeed: Optional[str] = flag(None, "DeepSpeed JSON file or packaged name (zero2, zero3); default zero2.")
    bf16: Optional[bool] = flag(None, "bf16 training; default: on with CUDA, off on CPU.")
    seed: int = 42
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.0
    logging_steps: int = 1
    save_steps: int = flag(0, "Save a resumable checkpoint every N steps (0: never).")
    save_total_limit: Optional[int] = flag(2, "Resumable checkpoints kept.")
    resume_from_checkpoint: Optional[str] = flag(None, "A checkpoint folder; 'latest' for the newest complete one "
                                                 "under output_dir (an error if there is none); 'auto' for the same "
                                                 "if there is one, else a fresh start (requeued jobs). It may come "
                                                 "from another world size or SP layout.")
    log_sample_ids: bool = flag(False, "Write the dataset indices each step trained on and skipped to "
                                "<output_dir>/sample_ids/dp<rank>.jsonl.")
    zero3_load: str = flag("auto", "ZeRO-3 only: partitioned (weights scattered while loading) | direct (loaded whole, "
                           "partitioned by DeepSpeed) | auto (partitioned on CUDA, direct on CPU).")
    seq_parallel_size: int = flag(1, "Sequence-parallel degree; DP = world / SP.")
    seq_parallel_ring_size: int = flag(1, "Ring degree; ulysses = SP / ring.")
    seq_parallel_ring_type: str = flag("zigzag_ring", "zigzag_ring | ring")
    disable_tqdm: bool = False


@dataclass
class StageArguments:
    """All arguments of one stage run, grouped the way HfArgumentParser returns them."""

    model: ModelArguments
    data: DataArguments
    train: TrainArguments
    recipe: Optional[Path] = None


class OneLineArgumentParser(HfArgumentParser):
    """HfArgumentParser whose errors are one line (no multi-screen usage dump) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def load_recipe(path: Path) -> dict:
    """Read a YAML recipe; unknown keys are an error, so a typo never silently does nothing."""
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    with open(path) as handle:
        recipe = yaml.safe_load(handle) or {}
    if not isinstance(recipe, dict):
        raise ConfigError(f"recipe {path} must be a mapping of flag names to values")
    known = {f.name for cls in (ModelArguments, DataArguments, TrainArguments) for f in dataclasses.fields(cls)}
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise ConfigError(f"recipe {path} has unknown keys: {', '.join(unknown)}")
    return recipe


def _split_recipe_flag(argv: list[str]) -> tuple[Optional[str], list[str]]:
    """Pull ``--recipe PATH`` out of argv; it chooses defaults, so it is read before the other flags."""
    rest, recipe = [], None
    iterator = iter(argv)
    for token in iterator:
        if token == "--recipe":
            recipe = next(iterator, None)
            if recipe is None:
                raise ConfigError("--recipe needs a path")
        elif token.startswith("--recipe="):
            recipe = token.split("=", 1)[1]
        else:
            rest.append(token)
    return recipe, rest


def parse_stage_args(stage: str, argv: Optional[list[str]] = None) -> StageArguments:
    """Parse a stage's flags on top of its recipe (the packaged ``<stage>.yaml`` unless ``--recipe`` names a file).

    A stage whose own recipe is missing is an error: running without it would silently drop e.g. stage 4's
    ``rope_theta`` and ``model_max_length``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe_flag, argv = _split_recipe_flag(argv)
    if recipe_flag:
        recipe_path = Path(recipe_flag)
    else:
        with reported_as(ConfigError, FileNotFoundError):
            recipe_path = packaged_recipe_path(stage)
    defaults = load_recipe(recipe_path)
    parser = OneLineArgumentParser((ModelArguments, DataArguments, TrainArguments), prog=f"longvila.stages.{stage}",
                                  allow_abbrev=False)
    parser.set_defaults(**defaults)
    model, data, train, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        raise ConfigError(f"unrecognized arguments: {' '.join(unknown)}")
    args = StageArguments(model=model, data=data, train=train, recipe=recipe_path)
    validate(args)
    return args


def validate(args: StageArguments) -> None:
    """Reject impossible settings with one line each; the world size is checked later, once it is known."""
    from longvila.engine.activation_offload import checkpointing_mode
    from longvila.engine.checkpoint_store import check_writable

    t, d, m = args.train, args.data, args.model
    with reported_as(ConfigError):
        t.gradient_checkpointing = checkpointing_mode(t.gradient_checkpointing)
    if not t.output_dir:
        raise ConfigError("--output_dir is required")
    with reported_as(ConfigError, PermissionError):
        check_writable(t.output_dir)
    sp_problem = _sequence_parallel_problem(t)
    checks = [
        (t.max_steps == 0 or t.max_steps < -1, f"--max_steps must be positive or -1, got {t.max_steps}"),
        (t.max_steps == -1 and t.num_train_epochs <= 0, "--num_train_epochs must be > 0 when --max_steps is -1"),
        (t.learning_rate < 0, f"--learning_rate must be >= 0, got {t.learning_rate}"),
        (t.per_device_train_batch_size < 1, "--per_device_train_batch_size must be >= 1"),
        (t.gradient_accumulation_steps < 1, "--gradient_accumulation_steps must be >= 1"),
        (not 0.0 <= t.warmup_ratio < 1.0, f"--warmup_ratio must be in [0, 1), got {t.warmup_ratio}"),
        (t.lr_scheduler_type not in LR_SCHEDULERS,
         f"--lr_scheduler_type must be one of {', '.join(LR_SCHEDULERS)}, got {t.lr_scheduler_type!r}"),
        (t.save_steps < 0, "--save_steps must be >= 0"),
        (sp_problem is not None, sp_problem),
        (t.zero3_load not in ("auto", "partitioned", "direct"),
         f"--zero3_load must be one of auto, partitioned, direct, got {t.zero3_load!r}"),
        (d.model_max_length < 8, f"--model_max_length must be >= 8, got {d.model_max_length}"),
        (d.num_video_frames < 1, f"--num_video_frames must be >= 1, got {d.num_video_frames}"),
        (d.fps is not None and d.fps <= 0, f"--fps must be > 0, got {d.fps}"),
        (m.rope_theta is not None and m.rope_theta <= 0, f"--rope_theta must be > 0, got {m.rope_theta}"),
        (m.attn_backend not in ATTN_BACKENDS,
         f"--attn_backend must be one of {', '.join(ATTN_BACKENDS)}, got {m.attn_backend!r}"),
        (d.dataloader_num_workers < 0, f"--dataloader_num_workers must be >= 0, got {d.dataloader_num_workers}"),
        (m.vision_chunk_frames < 0, f"--vision_chunk_frames must be >= 0 (0: off), got {m.vision_chunk_frames}"),
        (m.lora_r < 1, f"--lora_r must be >= 1, got {m.lora_r}"),
        (m.tiled_mlp_tokens < 0, f"--tiled_mlp_tokens must be >= 0 (0: off), got {m.tiled_mlp_tokens}"),
        (m.loss_impl not in ("chunked", "naive"), f"--loss_impl must be chunked or naive, got {m.loss_impl!r}"),
        (m.fused_kernels and m.loss_impl != "chunked", "--fused_kernels brings its own chunked loss; drop --loss_impl"),
        (m.init_from is not None and m.model_name_or_path is not None,
         "--init_from (a VILA checkpoint) and --model_name_or_path (an HF LLM) are alternatives: give one"),
        ((m.model_name_or_path is None) != (m.vision_tower is None),
         "--model_name_or_path and --vision_tower go together (VILA's stage-1 start from parts)"),
    ]
    for failed, message in checks:
        if failed:
            raise ConfigError(message)
    _validate_model_folders(m)
    with reported_as(ConfigError, FileNotFoundError):
        deepspeed_config_path(t.deepspeed)
    _validate_data_sources(d)


def _sequence_parallel_problem(t: TrainArguments) -> Optional[str]:
    """The SP flags' problem in the trainer's own words (``SequenceParallelConfig``), or None."""
    try:
        SequenceParallelConfig.from_args(t)
    except ValueError as error:
        return str(error)
    return None


def _validate_model_folders(m: ModelArguments) -> None:
    """Each folder flag gets the kind of folder it names, or one line that says which flag that folder needs."""
    from longvila.model.folders import require_kind
    from longvila.model.projector import TOKEN_ORDERS, MultimodalProjectorConfig

    if m.mm_projector_token_order not in (None, *TOKEN_ORDERS):
        raise ConfigError(f"--mm_projector_token_order must be one of {', '.join(TOKEN_ORDERS)}, "
                          f"got {m.mm_projector_token_order!r}")
    with reported_as(ConfigError):
        for path, kind, flag in ((m.init_from, "vila", "--init_from"), (m.model_name_or_path, "llm",
                                 "--model_name_or_path"), (m.vision_tower, "siglip", "--vision_tower")):
            if path is not None:
                require_kind(path, kind, flag)
        MultimodalProjectorConfig(m.mm_projector)


def _validate_data_sources(d: DataArguments) -> None:
    """--data_path / --data_mixture name readable files, a well-formed mixture, distinct source names."""
    from longvila.data.mixture_spec import data_sources

    with reported_as(ConfigError):
        data_sources(d.data_path, d.data_mixture, d.media_root)
