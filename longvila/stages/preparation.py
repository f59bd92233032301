"""Every transform a stage applies to the model it loaded, in one function and one documented order.

``prepare_model`` is the only place that writes the model's swappable parts (its trainable set and LoRA adapters,
loss function, fused modules, MLP tiling, attention dispatcher, sequence sharder, frame chunking and activation
checkpointing). Reading one function tells what a stage trains and how. The order, and why:

0. the stage's own edits (stage 4: RoPE base and context length): they change the configuration every later
   step reads;
1. freezing and LoRA: LoRA wraps the original projections, so it goes before anything that replaces or wraps
   modules around them, and what trains decides what the later wrappers must carry gradients through;
2. the loss function: an attribute, independent of the modules;
3. fused kernels: they replace RMSNorm modules and the attention's RoPE, which LoRA left alone;
4. the vision tower's frame chunking, and MLP tiling: each wraps a forward per module instance, after the
   modules they call are final (so a tile runs the LoRA-wrapped projections);
5. the parallel layout (``longvila/runtime.py:parallelize``): the attention dispatcher on the final attention
   modules, the sequence sharder and the frame encoder;
6. activation checkpointing, last: it wraps each decoder layer exactly as it will run.
"""

from __future__ import annotations

import logging

from longvila.config import StageArguments
from longvila.distributed.mesh import ParallelDims, SequenceParallelConfig
from longvila.errors import ConfigError, reported_as

logger = logging.getLogger("longvila")

COMPONENTS = ("vision_tower", "mm_projector", "llm")


def prepare_model(model, spec, args: StageArguments, tokenizer, sp: SequenceParallelConfig, device) -> ParallelDims:
    """Apply steps 0-6 of the module docstring to ``model`` for stage ``spec``; the run's parallel dims."""
    from longvila.runtime import parallelize

    if spec.prepare_model is not None:
        spec.prepare_model(model, tokenizer, args)
    freeze(model, spec, args)
    set_loss(model, args.model.loss_impl)
    if args.model.fused_kernels:
        from longvila.model.fused import enable_fused_kernels

        report = enable_fused_kernels(model)
        logger.info("fused kernels: %d RMSNorm, %d attention RoPE, chunked linear+CE", report.rms_norms,
                    report.attentions)
    model.vision_chunk_frames = args.model.vision_chunk_frames
    if args.model.tiled_mlp_tokens:
        from longvila.model.tiled_mlp import enable_tiled_mlp

        enable_tiled_mlp(model.llm, args.model.tiled_mlp_tokens)
    with reported_as(ConfigError):
        dims = parallelize(model, sp, args.model.attn_backend, device)
    if args.train.gradient_checkpointing != "false":
        model.enable_gradient_checkpointing()
    return dims


def freeze(model, spec, args: StageArguments) -> None:
    """The stage's trainable parts, then LoRA adapters where asked (LoRA on a part the stage freezes is refused)."""
    model.set_trainable(**{part: part in spec.trains for part in COMPONENTS})
    if args.model.lora_llm:
        if "llm" not in spec.trains:
            raise ConfigError(f"--lora_llm: stage {spec.name} does not train the LLM")
        from longvila.model.lora import apply_llm_lora

        apply_llm_lora(model, r=args.model.lora_r, alpha=args.model.lora_alpha, dropout=args.model.lora_dropout)
    if args.model.lora_vision:
        from longvila.model.lora import apply_vision_lora

        apply_vision_lora(model, r=args.model.lora_r, alpha=args.model.lora_alpha)


def set_loss(model, loss_impl: str) -> None:
    """``chunked`` is the model's own default; ``naive`` (full logits) is the reference the tests compare with."""
    if loss_impl == "chunked":
        return
    from longvila.model.loss import LOSS_FUNCTIONS

    model.loss_fn = LOSS_FUNCTIONS[loss_impl]
    logger.info("loss: %s (full logits)", loss_impl)
