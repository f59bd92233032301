"""What every stage does: parse, validate, load, freeze, build data, train, save in VILA layout.

A stage module only declares a :class:`StageSpec` (which parts train, which data it reads) and, if needed, a hook
that edits the model before training (stage 4 sets RoPE and the context length). Everything else is shared, so the
five stages cannot drift apart.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch.distributed as dist

from longvila.config import StageArguments, parse_stage_args
from longvila.errors import ConfigError, reported_as
from longvila.stages.preparation import COMPONENTS, prepare_model

logger = logging.getLogger("longvila")

@dataclass(frozen=True)
class StageSpec:
    name: str
    trains: frozenset
    data_kind: str  # "conversation" (image/video LLaVA JSON) or "long_text" (packed JSONL)
    summary: str
    prepare_model: Optional[Callable] = field(default=None, compare=False)
    config_updates: Optional[Callable] = field(default=None, compare=False)


@dataclass
class StageRun:
    """What a finished stage hands back (used by the pipeline and by tests)."""

    output_dir: Path
    history: list


def _build_dataset(spec: StageSpec, args: StageArguments, tokenizer, image_processor, env, tokens_per_frame: int):
    """One dataset for a single ``--data_path``; a MixtureDataset for a comma list or a ``--data_mixture``."""
    from longvila.data.mixture import MixtureDataset
    from longvila.data.mixture_spec import SourceSpec, data_sources
    from longvila.data.synthetic import ensure_synthetic_data
    from longvila.errors import DataError

    with reported_as(ConfigError):  # checked when the flags were parsed; a file may have gone since
        sources = data_sources(args.data.data_path, args.data.data_mixture, args.data.media_root)
    if not sources:
        data_dir = Path(args.data.data_dir or Path(args.train.output_dir).resolve().parent / "data")
        if env.is_main:
            ensure_synthetic_data(spec.name, data_dir)
        dist.barrier()
        data_path = Path(ensure_synthetic_data(spec.name, data_dir))
        sources = [SourceSpec(data_path.stem, data_path, 1.0, args.data.media_root)]
    datasets = {}
    for source in sources:
        try:
            datasets[source.name] = _load_source(spec, args, source, tokenizer, image_processor, tokens_per_frame)
        except ValueError as error:  # empty file, every record malformed, ...: one line for the user
            raise DataError(str(error) if len(sources) == 1 else f"dataset {source.name}: {error}") from error
    if len(sources) == 1 and args.data.data_mixture is None:
        return datasets[sources[0].name]
    mixture = MixtureDataset(datasets, {source.name: source.weight for source in sources}, seed=args.train.seed)
    logger.info("data mixture, %d draws per epoch:\n  %s", mixture.draws_per_epoch, "\n  ".join(mixture.describe()))
    return mixture


def _load_source(spec: StageSpec, args: StageArguments, source, tokenizer, image_processor, tokens_per_frame: int):
    """Long text is packed per source (documents never pack across files); conversations keep their media root."""
    if spec.data_kind == "long_text":
        from longvila.data.packing import PackedTextDataset

        return PackedTextDataset(source.path, tokenizer, args.data.model_max_length)
    from longvila.data.datasets import ConversationDataset

    return ConversationDataset(
        source.path, tokenizer, image_processor, media_root=source.media_root,
        num_video_frames=args.data.num_video_frames, fps=args.data.fps,
        model_max_length=args.data.model_max_length, tokens_per_frame=tokens_per_frame, lazy_media=True,
    )


def _total_steps(args: StageArguments, samples_per_epoch: int) -> int:
    train = args.train
    if train.max_steps > 0:
        return train.max_steps
    per_step = train.per_device_train_batch_size * train.gradient_accumulation_steps
    return max(1, math.ceil(train.num_train_epochs * samples_per_epoch / per_step))


def save_final(model, tokenizer, image_processor, spec: StageSpec, args: StageArguments, env, zero3: bool) -> None:
    """Merge LoRA, gather ZeRO-3 shards, and write the VILA layout under ``output_dir`` (rank 0)."""
    from longvila.engine.checkpoint_store import publish_entries
    from longvila.model.checkpoint import save_vila
    from longvila.model.lora import merge_lora

    updates = {f"tune_{part}" if part != "llm" else "tune_language_model": part in spec.trains
               for part in COMPONENTS}
    updates.update(num_video_frames=args.data.num_video_frames, fps=args.data.fps or 0.0)
    if spec.config_updates is not None:
        updates.update(spec.config_updates(args))

    out = Path(args.train.output_dir)
    updates.update(resume_path=str(out.resolve()), _name_or_path=str(out.resolve()))

    def write():
        if env.is_main:  # staged, then moved in with config.json last: a crash never leaves a finished-looking model
            staged = out / ".tmp-final-model"
            shutil.rmtree(staged, ignore_errors=True)
            save_vila(merge_lora(model), tokenizer, image_processor, staged, **updates)
            publish_entries(staged, out, last="config.json")

    if zero3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            write()
    else:
        write()
    dist.barrier()


def _check_fused_kernels(args: StageArguments, env) -> None:
    """``--fused_kernels`` where Triton cannot run would quietly fall back to the torch references: refuse it."""
    if not args.model.fused_kernels:
        return
    from longvila.kernels import require_triton

    with reported_as(ConfigError):
        require_triton(env.device, "--fused_kernels")


def _preflight(args: StageArguments, sp, env) -> None:
    """What configs and folders decide, before the weights load (``longvila/stages/preflight.py``). The resume
    request is settled here once: the trainer then resumes from exactly the folder named (or starts fresh)."""
    from longvila.runtime import embedded_default
    from longvila.stages.preflight import check_sequence_parallel_heads, resolve_resume

    checkpoint = resolve_resume(args)
    args.train.resume_from_checkpoint = str(checkpoint.path) if checkpoint is not None else None
    check_sequence_parallel_heads(args, sp, lambda: embedded_default(env))


def load_start_model(spec: StageSpec, args: StageArguments, env, ds_config: dict):
    """The model a stage starts from, loaded once, straight in the training dtype, partitioned under ZeRO-3.

    ``--model_name_or_path`` + ``--vision_tower``: pretrained parts and a fresh projector (VILA's stage 1);
    ``--init_from``: a VILA-layout checkpoint; neither: the embedded tiny default (built once, by rank 0).
    """
    from longvila.engine.metrics import host_peak_memory_gb
    from longvila.engine.trainer import training_dtype
    from longvila.engine.zero3_loading import partitioned_loading, wants_partitioned_load

    started = time.perf_counter()
    enabled = wants_partitioned_load(ds_config, args.train.zero3_load, env.device.type)
    with partitioned_loading(ds_config, enabled) as partitioned:
        loaded = _load_start_model(spec, args, env, training_dtype(args.train, env.device))
    logger.info("model loaded in %.1f s as %s%s; host peak memory so far %.2f GB on rank 0",
                time.perf_counter() - started, str(training_dtype(args.train, env.device)).replace("torch.", ""),
                ", ZeRO-3 partitioned at load" if partitioned else "", host_peak_memory_gb())
    return loaded


def _load_start_model(spec: StageSpec, args: StageArguments, env, dtype):
    from longvila.model.checkpoint import load_vila
    from longvila.runtime import embedded_default

    m = args.model
    with reported_as(ConfigError):  # wrong folder kind, unsupported NVILA feature, bad template: one line
        if m.model_name_or_path is not None:
            from longvila.model.from_parts import Parts, build_from_parts

            logger.info("stage %s: %s; starting from LLM %s + vision tower %s + fresh %s projector", spec.name,
                        spec.summary, m.model_name_or_path, m.vision_tower, m.mm_projector)
            parts = Parts(m.model_name_or_path, m.vision_tower, m.mm_projector, m.mm_vision_select_layer,
                          m.mm_vision_select_feature, m.chat_template)
            return build_from_parts(parts, dtype, seed=args.train.seed)
        init_from = m.init_from or str(embedded_default(env))
        logger.info("stage %s: %s; starting from %s", spec.name, spec.summary, init_from)
        return load_vila(init_from, dtype, token_order=m.mm_projector_token_order)


def _data_stream(spec: StageSpec, args: StageArguments, dataset, tokenizer, image_processor, dims, env):
    """The rank's micro-batches, loaded ahead by ``--dataloader_num_workers`` threads; with media, each SP rank
    decodes only the frames it encodes, and the SP group agrees on clips that fail to decode."""
    from functools import partial

    from longvila.data.collate import collate
    from longvila.data.rank_media import RankMedia
    from longvila.engine.data_stream import MicroBatchStream
    from longvila.engine.prefetch import PrefetchingStream, failed_rows_agreement

    rank_media = (RankMedia(image_processor, dims.sp_rank, dims.sp.sp_size)
                  if spec.data_kind == "conversation" else None)
    batch_size = args.train.per_device_train_batch_size
    stream = MicroBatchStream(
        dataset, partial(collate, pad_token_id=tokenizer.pad_token_id, rank_media=rank_media), batch_size,
        dp_rank=dims.dp_rank, dp_size=dims.dp_size, seed=args.train.seed,
        name=str(args.data.data_mixture or args.data.data_path or spec.name),
    )
    agree = (failed_rows_agreement(dims.groups.sp_group, env.device, batch_size)
             if rank_media is not None and dims.sp.enabled else None)
    return PrefetchingStream(stream, args.data.dataloader_num_workers, agree)


def run_stage(spec: StageSpec, argv: Optional[list[str]] = None) -> StageRun:
    """Entry point shared by ``python -m`` / ``torchrun -m longvila.stages.<stage>`` and the pipeline."""
    args = parse_stage_args(spec.name, argv)

    from longvila.console import setup_logging
    from longvila.engine.deepspeed_config import build_deepspeed_config, zero_stage
    from longvila.distributed.mesh import SequenceParallelConfig
    from longvila.runtime import start_processes
    from longvila.engine.rng import set_seed
    from longvila.engine.trainer import Trainer, uses_bf16
    from longvila.model.loss import count_supervised_tokens
    from longvila.recipes import deepspeed_config_path

    sp = SequenceParallelConfig.from_args(args.train)
    with reported_as(ConfigError):
        env = start_processes(sp)
    setup_logging(env.rank)
    _preflight(args, sp, env)
    _check_fused_kernels(args, env)
    set_seed(args.train.seed)
    ds_config = build_deepspeed_config(args.train, env.world_size, uses_bf16(args.train, env.device))
    model, tokenizer, image_processor = load_start_model(spec, args, env, ds_config)
    logger.info("recipe %s; DeepSpeed config %s", args.recipe, deepspeed_config_path(args.train.deepspeed))
    dims = prepare_model(model, spec, args, tokenizer, sp, env.device)

    dataset = _build_dataset(spec, args, tokenizer, image_processor, env, model.tokens_per_frame)
    stream = _data_stream(spec, args, dataset, tokenizer, image_processor, dims, env)
    total_steps = _total_steps(args, stream.samples_per_epoch)
    trainer = Trainer(model, stream, args.train, env, count_supervised_tokens, total_steps, dims=dims,
                      ds_config=ds_config)
    history = trainer.train()
    save_final(trainer.module, tokenizer, image_processor, spec, args, env,
               zero3=zero_stage(trainer.ds_config) == 3)
    logger.info("stage %s done: %d steps, final loss %.4f, saved to %s", spec.name, trainer.step,
                history[-1]["loss"] if history else float("nan"), args.train.output_dir)
    return StageRun(Path(args.train.output_dir), history)


def main(spec: StageSpec, argv: Optional[list[str]] = None) -> None:
    """Console entry: configuration errors become one line and exit code 2, before any compute."""
    from longvila.console import run_console

    run_console(f"longvila {spec.name}", lambda args: run_stage(spec, args), argv)
