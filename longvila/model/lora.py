"""LoRA on the LLM (LongVILA stage 4: r=8, alpha=16 on q/k/v/o, embeddings and norms trainable) and the tower.

Adapters are injected with peft in place of ``model.llm`` / ``model.vision_tower`` (peft wrappers forward every
attribute the rest of the model uses: get_decoder, get_input_embeddings, config). ``merge_lora`` folds them back
so ``save_vila`` writes plain weights that VILA and plain transformers load.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

LLM_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
VISION_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def has_lora(module: nn.Module) -> bool:
    """True for a peft-wrapped module (adapters not merged yet)."""
    return hasattr(module, "merge_and_unload") and hasattr(module, "peft_config")


def _lora(module: nn.Module, r: int, alpha: int, dropout: float, targets: Sequence[str]) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    if r <= 0:
        raise ValueError(f"LoRA rank must be positive, got r={r}")
    if has_lora(module):
        raise ValueError(f"{type(module).__name__} already carries LoRA adapters")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none")
    return get_peft_model(module, config)


def apply_llm_lora(
    model,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: Sequence[str] = LLM_TARGETS,
    trainable_extra: Sequence[str] = ("embed_tokens", "norm"),
) -> None:
    """Wrap ``model.llm`` with LoRA; freeze its base weights except parameters whose name contains an extra.

    Substring matching mirrors LongLoRA's ``trainable_params="embed,norm"``: "norm" makes every RMSNorm trainable
    (input/post-attention and final). Vision tower and projector trainability is left as it was.
    """
    model.llm = _lora(model.llm, r, alpha, dropout, target_modules)
    for name, param in model.llm.named_parameters():
        if "lora_" not in name and any(extra in name for extra in trainable_extra):
            param.requires_grad_(True)
    model.config["tune_language_model"] = True


def apply_vision_lora(
    model, r: int = 8, alpha: int = 16, dropout: float = 0.0, target_modules: Sequence[str] = VISION_TARGETS
) -> None:
    """Wrap ``model.vision_tower`` (SigLIP attention projections) with LoRA; its base weights are frozen."""
    model.vision_tower = _lora(model.vision_tower, r, alpha, dropout, target_modules)
    model.config["tune_vision_tower"] = True


def merge_lora(model):
    """Fold every adapter into its base weights and drop the peft wrappers (in place; returns the model)."""
    if has_lora(model.llm):
        model.llm = model.llm.merge_and_unload()
    if has_lora(model.vision_tower):
        model.vision_tower = model.vision_tower.merge_and_unload()
    return model
