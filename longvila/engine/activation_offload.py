"""``--gradient_checkpointing offload``: the checkpointed decoder-layer inputs go to host memory.

With gradient checkpointing each decoder layer keeps only its input hidden states (S x H) until the backward; at 1M
tokens and 28 layers that alone is tens of GB per GPU. DeepSpeed's ``CheckpointHiddenStatesOffload`` (from its
``offload_activations`` module) marks exactly those inputs of HF ``GradientCheckpointingLayer``s and moves them to
pinned host buffers on a side stream during the forward, bringing each back when its layer's backward needs it.
Everything else (the LM head, non-checkpointed modules) is untouched.

DeepSpeed skips the CPU accelerator by design: there it marks tensors and offloads none, so on CPU this is the same
code path with the same results, which is how the tests check it.
"""

from __future__ import annotations

import contextlib

CHECKPOINTING_MODES = ("false", "true", "offload")


def checkpointing_mode(value) -> str:
    """Normalise ``--gradient_checkpointing`` (a bool from a YAML recipe, or a flag string) to a mode name."""
    text = str(value).strip().lower()
    aliases = {"1": "true", "yes": "true", "on": "true", "0": "false", "no": "false", "off": "false", "none": "false"}
    text = aliases.get(text, text)
    if text not in CHECKPOINTING_MODES:
        raise ValueError(f"--gradient_checkpointing must be one of {', '.join(CHECKPOINTING_MODES)}, got {value!r}")
    return text


def offload_context(enabled: bool):
    """A fresh offload context for one micro-batch's forward and backward (a null context when disabled)."""
    if not enabled:
        return contextlib.nullcontext()
    from deepspeed.runtime.activation_checkpointing.offload_activations import (
        get_checkpoint_hidden_states_offloading_ctx_manager,
    )

    return get_checkpoint_hidden_states_offloading_ctx_manager()
