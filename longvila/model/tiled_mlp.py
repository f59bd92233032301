"""Tiled MLP: each decoder MLP runs over sequence tiles, each tile recomputed in the backward.

The MLP's (S x intermediate) activations are the largest per-token tensors of a decoder layer (Qwen2-1.5B: 8,960
wide, several of them: gate, up, their product), and with plain checkpointing a layer's recompute holds them for the
whole sequence at once. Here the MLP's forward is split into tiles of ``tile_tokens`` rows, each under non-reentrant
activation checkpointing, so the backward rebuilds one tile's intermediates at a time and no (S x intermediate)
tensor ever lives beyond one tile. Outputs and gradients are those of the untiled MLP (the MLP is per-token).

Why our own and not DeepSpeed's ``TiledMLP``: that one is an autograd.Function that runs ``torch.autograd.backward``
on each tile inside its backward and so needs ZeRO-specific bookkeeping for parameter gradients; per-tile
checkpointing keeps the ordinary autograd graph, so ZeRO-2/3 hooks, LoRA adapters and sequence parallelism (the MLP
sees only the rank's shard) work unchanged. Wiring is per instance: each MLP object's class becomes a subclass with
the tiled forward, so state-dict keys and the model files stay untouched.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

DEFAULT_TILE_TOKENS = 4096
"""Rows per tile: at Qwen2-1.5B widths one tile's intermediates are 4096 x 8960 x 4 B = 147 MB each in fp32."""


def _tiled_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    tile = self._longvila_tile_tokens
    seq_dim = hidden_states.dim() - 2
    length = hidden_states.shape[seq_dim]
    if length <= tile or not torch.is_grad_enabled():
        return self._longvila_untiled_forward(hidden_states)
    pieces = [checkpoint(self._longvila_untiled_forward, part, use_reentrant=False)
              for part in hidden_states.split(tile, dim=seq_dim)]
    return torch.cat(pieces, dim=seq_dim)


def _is_decoder_mlp(module: nn.Module) -> bool:
    return type(module).__name__.endswith("MLP") and all(hasattr(module, p) for p in ("gate_proj", "up_proj",
                                                                                       "down_proj"))


def enable_tiled_mlp(llm: nn.Module, tile_tokens: int = DEFAULT_TILE_TOKENS) -> int:
    """Tile every decoder MLP of ``llm`` (idempotent; a new tile size replaces the old); returns how many."""
    if tile_tokens < 1:
        raise ValueError(f"tiled MLP tile size must be >= 1 token, got {tile_tokens}")
    subclasses: dict[type, type] = {}
    count = 0
    for module in llm.modules():
        if not _is_decoder_mlp(module):
            continue
        base = type(module)
        if not getattr(base, "_longvila_tiled", False):
            if base not in subclasses:
                subclasses[base] = type(f"Tiled{base.__name__}", (base,), {
                    "forward": _tiled_forward, "_longvila_untiled_forward": base.forward, "_longvila_tiled": True})
            module.__class__ = subclasses[base]
        module._longvila_tile_tokens = tile_tokens
        count += 1
    if count == 0:
        raise ValueError(f"tiled MLP found no gate/up/down MLP in {type(llm).__name__}")
    return count
