"""``--fused_kernels``: put the Triton RMSNorm, RoPE and chunked linear+cross-entropy into a loaded model.

* RMSNorm: every ``*RMSNorm`` module of the LLM is swapped for :class:`~longvila.kernels.rmsnorm.FusedRMSNorm`
  sharing the same weight (state-dict keys do not change, so checkpoints are unaffected).
* Cross-entropy: ``model.loss_fn`` becomes the chunked kernel, which never materialises the (tokens x vocab) logits.
* RoPE: transformers 5 applies RoPE inside each attention module's forward through a module-level function, with no
  hook short of the hub ``kernels`` package. Each decoder attention *instance* therefore gets a subclass whose
  forward is the same projection -> RoPE -> ``AttentionInterface`` -> o_proj sequence with our kernel in the RoPE
  slot. A test checks that it equals the stock forward, so a transformers change that breaks the mirror fails CI.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from longvila.kernels.fused_linear_ce import cross_entropy_sum as fused_cross_entropy_sum
from longvila.kernels.rmsnorm import fuse_rms_norms
from longvila.kernels.rope import apply_rotary_pos_emb

_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def _fused_rope_forward(self, hidden_states, position_embeddings, attention_mask, past_key_values=None, **kwargs):
    """Qwen2/Llama attention forward with the Triton RoPE (same arithmetic as transformers' forward)."""
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, self.head_dim)
    query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
    key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
    value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
    cos, sin = position_embeddings
    query, key = apply_rotary_pos_emb(query, key, cos, sin)
    if past_key_values is not None:
        key, value = past_key_values.update(key, value, self.layer_idx)
    attention = ALL_ATTENTION_FUNCTIONS[self.config._attn_implementation]
    output, weights = attention(
        self, query, key, value, attention_mask,
        dropout=0.0 if not self.training else self.attention_dropout,
        scaling=self.scaling,
        sliding_window=getattr(self, "sliding_window", None),
        **kwargs,
    )
    return self.o_proj(output.reshape(*input_shape, -1).contiguous()), weights


def _is_hf_attention(module: nn.Module) -> bool:
    return (type(module).__name__.endswith("Attention") and all(hasattr(module, p) for p in _PROJECTIONS)
            and hasattr(module, "head_dim") and hasattr(module, "scaling"))


def fuse_rope(llm: nn.Module) -> int:
    """Give each decoder attention instance the fused-RoPE forward; returns how many were switched."""
    switched = 0
    subclasses: dict[type, type] = {}
    for module in llm.modules():
        if not _is_hf_attention(module) or getattr(module, "_longvila_fused_rope", False):
            continue
        base = type(module)
        if base not in subclasses:
            subclasses[base] = type(f"FusedRope{base.__name__}", (base,),
                                    {"forward": _fused_rope_forward, "_longvila_fused_rope": True})
        module.__class__ = subclasses[base]
        switched += 1
    return switched


@dataclass(frozen=True)
class FusedReport:
    rms_norms: int
    attentions: int


def enable_fused_kernels(model) -> FusedReport:
    """Switch a :class:`~longvila.model.vlm.VILAModel` to the fused kernels; fails loudly if nothing matched."""
    llm = model.llm.get_base_model() if hasattr(model.llm, "get_base_model") else model.llm
    report = FusedReport(rms_norms=fuse_rms_norms(llm), attentions=fuse_rope(llm))
    if report.rms_norms == 0 or report.attentions == 0:
        raise ValueError(f"--fused_kernels found nothing to fuse in {type(llm).__name__} ({report})")
    model.loss_fn = fused_cross_entropy_sum
    return report


__all__ = ["FusedReport", "enable_fused_kernels", "fuse_rope"]
