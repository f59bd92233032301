"""Peak memory of one rank in one training step, term by term.

The peak is the larger of two phases of a step; it is never the sum of everything:

- **backward**: what persists (weights, optimizer state, DeepSpeed's gradient bucket, the runtime) plus the larger
  of the checkpointed activations and the gradients (the backward frees one layer's checkpoint as it produces that
  layer's gradients, so the two trade places; the trainable embedding's gradient arrives last, after every layer's
  transient is gone) plus the larger of the loss's buffers and, after the loss, the LM head's gradient with one
  layer's recompute-and-backward transient and its communication buffers, plus the vision tower's activations.
- **optimizer step**: what persists plus the fp32 gradient partition the step reads and Adam's temporaries.

Offload (``zero2_offload`` / ``zero3_offload``, ``--gradient_checkpointing offload``) moves terms to host memory:
the optimizer's 16 bytes per trainable parameter (fp32 gradients, master, two moments) plus the step's
temporaries; ZeRO-3's weight partition; every layer's checkpoint.

DeepSpeed ZeRO (``longvila/recipes/zero2.json``: ZeRO-2 keeps full weights; ``zero3.json`` partitions them too) keeps an
fp32 master partition and Adam's two moments, 12 bytes per trainable parameter over the DP x SP ranks, even when
training in fp32. Its reduce bucket (``reduce_bucket_size``, 2e8 elements) persists after the first backward; a
gradient larger than the bucket (a 152K x 3584 embedding) is reduced on its own and needs its full size once.

Activation terms count elements per local token from the layer's widths: q, kv (times the replication when Ulysses
has more ranks than kv heads), hidden and MLP intermediate (tiled: one tile of ``--tiled_mlp_tokens`` rows). The
element counts per width (``LAYER_TRANSIENT``) and the naive loss's bytes per logit are the measured ones: the
long-context memory benchmark's rows (``benchmarks/results/cpu-*-long-context-memory*.json``) are reproduced within
10% by ``benchmarks/plan_accuracy.py``, which ``tests/plan/test_accuracy.py`` checks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from longvila.plan.hardware import Device
from longvila.plan.layout import Layout
from longvila.plan.model_shape import ModelShape
from longvila.plan.workload import TrainingChoices, Workload

GiB = 2**30
REDUCE_BUCKET_ELEMENTS = 200_000_000
"""``reduce_bucket_size`` (and ``allgather_bucket_size``) of the packaged DeepSpeed configs."""
OPTIMIZER_STEP_BYTES = 9.5
"""Bytes per trainable parameter (over the ZeRO ranks) alive only during the optimizer step: the fp32 gradient
partition it reads (4) and the temporaries of torch's multi-tensor AdamW and gradient clipping. Fitted, with
``hardware.cpu_device``'s runtime, to the step peaks of two probes (Qwen2-7B shapes with LoRA, Qwen2-0.5B shapes
fully trained); every other measured point is a check of it."""
CHECKPOINTED_WIDTHS = 3
"""Hidden-sized tensors per token kept beside the per-layer checkpoints: the last layer's output, the final norm's
output and the gradient of the hidden states that the chunked loss forms in its forward."""
LAYER_TRANSIENT = {"hidden": 4, "q": 3, "kv": 4, "mlp": 6}
"""Tensors of each width alive during one decoder layer's recompute and backward (inputs to the matmuls, their
outputs and gradients; for the MLP: the SwiGLU's gate, up, activation and product, and two of their gradients)."""
NAIVE_LOSS_FP32_COPIES = 2.5
"""fp32 copies of the full logits the naive loss holds at its peak (measured: 9.4 to 10.6 bytes per logit over the
three naive rows of the long-context memory benchmark); a bf16 run adds the bf16 logits themselves."""
VISION_TRANSIENT = {"hidden": 6, "mlp": 3}
"""SigLIP layer tensors alive during one layer's recompute and backward (per patch)."""


@dataclass(frozen=True)
class MemoryBreakdown:
    """GiB per GPU (``host_offload_gib``: what this GPU keeps in host memory: offloaded optimizer state and
    fp32 gradients, weights, checkpointed activations)."""

    weights_gib: float
    optimizer_state_gib: float
    optimizer_step_gib: float
    checkpointed_activations_gib: float
    layer_transient_gib: float
    loss_gib: float
    communication_gib: float
    vision_tower_gib: float
    runtime_gib: float
    host_offload_gib: float
    gradient_bucket_gib: float
    layer_gradients_gib: float
    """Gradients reduced by the time the first decoder layer's backward ends (all but a trainable embedding's)."""
    head_gradient_gib: float
    """A training LM head's weight gradient: formed by the loss (inside its buffers while it runs), it stays through
    every layer's backward."""

    @property
    def persistent_gib(self) -> float:
        return self.weights_gib + self.optimizer_state_gib + self.gradient_bucket_gib + self.runtime_gib

    @property
    def backward_gib(self) -> float:
        return (self.persistent_gib + max(self.checkpointed_activations_gib, self.layer_gradients_gib)
                + max(self.loss_gib, self.head_gradient_gib + self.layer_transient_gib + self.communication_gib)
                + self.vision_tower_gib)

    @property
    def step_gib(self) -> float:
        return self.persistent_gib + self.optimizer_step_gib

    @property
    def peak_gib(self) -> float:
        return max(self.backward_gib, self.step_gib)

    @property
    def peak_phase(self) -> str:
        return "backward" if self.backward_gib >= self.step_gib else "optimizer step"

    def as_dict(self) -> dict:
        return {**asdict(self), "backward_gib": self.backward_gib, "step_gib": self.step_gib,
                "peak_gib": self.peak_gib, "peak_phase": self.peak_phase}


def predict_memory(shape: ModelShape, layout: Layout, workload: Workload, choices: TrainingChoices,
                   device: Device) -> MemoryBreakdown:
    """Predicted peak of one rank (module docstring for the phases and terms)."""
    act = 2 if choices.bf16 else 4  # bytes per activation / weight element
    ranks = layout.gpus  # ZeRO partitions over DP x SP
    trainable = shape.trainable_params
    tokens = workload.tokens * choices.micro_batch
    local = -(-tokens // layout.sp)
    q_width, kv_width = shape.attention_widths(layout.ulysses)

    if choices.zero_stage == 3:
        gathered = max(2 * shape.layer_params, shape.lm_head_elements)
        weights = (gathered + (0 if choices.offloads_params else shape.total_params / ranks)) * act
    else:
        weights = shape.total_params * act
    # A CPU process's resident memory counts only the pages written: the bucket's unused tail does not show there.
    bucket_elements = REDUCE_BUCKET_ELEMENTS if device.is_cuda else min(REDUCE_BUCKET_ELEMENTS, trainable)
    bucket = max(bucket_elements, shape.largest_trainable) * act if trainable else 0
    embedding = shape.lm_head_elements if shape.embedding_trainable else 0
    if choices.offloads_optimizer:  # fp32 gradients, master weights, Adam state and the step live in host memory
        optimizer_state = optimizer_step = layer_gradients = 0.0
        host = 20 * trainable / ranks
    else:
        optimizer_state = 12 * trainable / ranks
        optimizer_step = OPTIMIZER_STEP_BYTES * trainable / ranks
        layer_gradients = (trainable - embedding) / ranks * act
        host = 0.0
    if choices.offloads_params:
        host += shape.total_params / ranks * act

    per_layer = local * shape.hidden_size * act
    transient = _layer_transient(shape, local, q_width, kv_width, choices, act)
    if choices.checkpointing == "false":
        checkpoints = shape.num_layers * transient
    else:
        on_device_layers = 0 if choices.checkpointing == "offload" else shape.num_layers
        checkpoints = per_layer * (on_device_layers + CHECKPOINTED_WIDTHS) + local * shape.head_dim * 2 * 4
    if choices.checkpointing == "offload":
        host += per_layer * shape.num_layers

    communication = _communication_buffers(layout, local, q_width, kv_width, act)
    loss = _loss(shape, local, choices, act)
    vision = _vision(shape, layout, workload, choices, act)
    return MemoryBreakdown(
        weights_gib=weights / GiB, optimizer_state_gib=optimizer_state / GiB,
        optimizer_step_gib=optimizer_step / GiB, checkpointed_activations_gib=checkpoints / GiB,
        layer_transient_gib=transient / GiB, loss_gib=loss / GiB, communication_gib=communication / GiB,
        vision_tower_gib=vision / GiB, runtime_gib=device.runtime_gib, host_offload_gib=host / GiB,
        gradient_bucket_gib=bucket / GiB, layer_gradients_gib=layer_gradients / GiB,
        head_gradient_gib=(shape.lm_head_elements * act if shape.head_trainable else 0) / GiB,
    )


def _layer_transient(shape: ModelShape, local: int, q_width: int, kv_width: int, choices: TrainingChoices,
                     act: int) -> float:
    c = LAYER_TRANSIENT
    tile = min(local, choices.tiled_mlp_tokens) if choices.tiled_mlp_tokens else local
    return act * (local * (c["hidden"] * shape.hidden_size + c["q"] * q_width + c["kv"] * kv_width)
                  + tile * c["mlp"] * shape.intermediate_size)


def _communication_buffers(layout: Layout, local: int, q_width: int, kv_width: int, act: int) -> float:
    """Ulysses all-to-all receive buffers for q, k, v and the output; ring: two K/V blocks in flight plus the fp32
    output and LSE accumulators."""
    total = 0.0
    if layout.ulysses > 1:
        total += local * (2 * q_width + 2 * kv_width) * act
    if layout.ring > 1:
        total += 2 * local * 2 * kv_width * act + local * q_width * 4
    return total


def _loss(shape: ModelShape, local: int, choices: TrainingChoices, act: int) -> float:
    """The naive loss's full logits; or the chunked loss's fp32 LM-head gradient accumulator (when the head trains),
    the gradient of the hidden states and two chunks of fp32 logits."""
    from longvila.kernels.fused_linear_ce import default_chunk_size

    vocab, hidden = shape.vocab_size, shape.hidden_size
    if choices.loss_impl == "naive":
        return local * vocab * (NAIVE_LOSS_FP32_COPIES * 4 + (act if choices.bf16 else 0))
    rows = default_chunk_size(local, vocab, hidden)
    weight_gradient = shape.lm_head_elements * 4 if shape.head_trainable else 0
    return weight_gradient + local * hidden * 4 + 2 * rows * vocab * 4


def _vision(shape: ModelShape, layout: Layout, workload: Workload, choices: TrainingChoices, act: int) -> float:
    """SigLIP on this rank's share of the frames (MM-SP shards frames over the SP group)."""
    if not workload.frames:
        return 0.0
    frames = -(-workload.frames * choices.micro_batch // layout.sp)
    patches = frames * shape.vision_patches
    c = VISION_TRANSIENT
    transient = patches * (c["hidden"] * shape.vision_hidden_size + c["mlp"] * shape.vision_intermediate_size) * act
    if "vision_tower" not in choices.trains:
        return transient / 2  # forward only: no backward tensors, nothing kept
    kept = patches * shape.vision_hidden_size * act * shape.vision_layers if choices.checkpointing != "false" \
        else transient * shape.vision_layers
    return kept + transient
