"""Predicted time of one optimizer step: compute from FLOPs, plus the communication that is not hidden.

FLOPs per rank (one micro-batch of ``tokens / SP`` local tokens):

- Dense: 2 FLOPs per weight per token forward. Training runs the forward, the recompute (with checkpointing),
  the input-gradient matmuls, and the weight-gradient matmuls only for weights that train (LoRA: almost none).
  The LM head runs once in the chunked loss, with its input gradient (and weight gradient when the head trains).
- Attention: causal forward 4 * S^2 * heads * head_dim * 0.5 per layer over the whole sequence, split evenly over
  the SP ranks (zigzag balances the causal work); the backward is 2.5x the forward (``benchmarks/RESULTS.md``),
  and the recompute repeats the forward. Packed documents do less work; this is the one-document bound.
- Vision (stage 5 and the image stages): SigLIP's layers on this rank's share of the frames; a trained tower is
  recomputed in the backward whenever its frames are chunked (``--vision_chunk_frames`` above 0), whatever
  ``--gradient_checkpointing`` says.

Communication (bytes per rank over the link the group spans; ``Device.link_efficiency`` of its bandwidth):

- Ulysses: four all-to-alls per layer (q, k, v, output) in the forward, again in the recompute and the backward;
  each rank sends (U - 1) / U of its tensors. Not overlapped with compute.
- Ring: (R - 1) K/V blocks per layer forward, twice that in the backward (K/V and their gradients); overlapped
  with the attention of the previous block, so only the excess over the attention time counts.
- ZeRO: gradients reduce-scattered and updated weights all-gathered each step (ZeRO-3 also gathers the weights for
  the forward, the recompute and the backward). ``overlap_comm`` is off in the packaged configs.
- Offload: each offloaded checkpoint crosses the host link twice; with the optimizer in host memory the gradients go
  down and the updated weights come up, and the node's CPUs run Adam; offloaded ZeRO-3 weights come up for the
  forward, the recompute and the backward.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from longvila.plan.hardware import Device
from longvila.plan.layout import Layout
from longvila.plan.model_shape import ModelShape
from longvila.plan.workload import TrainingChoices, Workload

BACKWARD_ATTENTION_RATIO = 2.5
HOST_ADAM_PARAMS_PER_S = 1e9
"""Parameters per second one node's CPUs update with Adam when the optimizer is offloaded (an assumption: a
two-socket host with torch's multi-tensor AdamW; DeepSpeed's compiled CPU Adam is faster)."""


@dataclass(frozen=True)
class StepTime:
    """Seconds per optimizer step on one rank, and the FLOPs behind them."""

    dense_s: float
    attention_s: float
    vision_s: float
    ulysses_s: float
    ring_exposed_s: float
    zero_s: float
    offload_s: float
    model_tflop: float

    @property
    def total_s(self) -> float:
        return (self.dense_s + self.attention_s + self.vision_s + self.ulysses_s + self.ring_exposed_s
                + self.zero_s + self.offload_s)

    def as_dict(self) -> dict:
        return {**asdict(self), "total_s": self.total_s}


def _bandwidth(device: Device, layout: Layout, group_span: int) -> float:
    """Bytes/s of a collective over ``group_span`` consecutive ranks (inter-node once it leaves a node)."""
    gbps = device.intra_node_gbps if group_span <= layout.gpus_per_node else device.inter_node_gbps
    return gbps * 1e9 * device.link_efficiency


def predict_step_time(shape: ModelShape, layout: Layout, workload: Workload, choices: TrainingChoices,
                      device: Device) -> StepTime:
    act = 2 if choices.bf16 else 4
    recompute = 1 if choices.checkpointing != "false" else 0
    tokens = workload.tokens * choices.micro_batch
    local = tokens / layout.sp
    peak = device.peak_tflops * 1e12

    layer_weights = shape.layer_params * shape.num_layers
    passes = 1 + recompute + 1 + shape.trainable_llm_fraction  # forward, recompute, input grads, weight grads
    head = shape.lm_head_elements * (2 + (1 if shape.head_trainable else 0))
    dense = 2 * local * (layer_weights * passes + head)
    attention_fwd = 4 * tokens ** 2 * shape.num_q_heads * shape.head_dim * 0.5 * shape.num_layers
    attention = attention_fwd * (1 + recompute + BACKWARD_ATTENTION_RATIO) / layout.sp
    vision = _vision_flops(shape, layout, workload, choices, recompute)

    q_width, kv_width = shape.attention_widths(layout.ulysses)
    ulysses = 0.0
    if layout.ulysses > 1:
        per_layer = local * (2 * q_width + 2 * kv_width) * act * (layout.ulysses - 1) / layout.ulysses
        ulysses = per_layer * shape.num_layers * (2 + recompute) / _bandwidth(device, layout, layout.ulysses)
    ring_exposed = 0.0
    if layout.ring > 1:
        per_layer = (layout.ring - 1) * local * 2 * kv_width * act * (1 + recompute + 2)
        ring_comm = per_layer * shape.num_layers / _bandwidth(device, layout, layout.sp)
        ring_exposed = max(0.0, ring_comm - attention / (peak * device.attention_efficiency))
    ranks = layout.gpus
    zero = 0.0
    if ranks > 1 and shape.trainable_params:
        volume = 2 * shape.trainable_params * act * (ranks - 1) / ranks
        if choices.zero_stage == 3:
            volume += (2 + recompute) * shape.total_params * act * (ranks - 1) / ranks
        zero = volume / _bandwidth(device, layout, ranks)
    host_bytes = 0.0
    if choices.checkpointing == "offload":
        host_bytes += 2 * local * shape.hidden_size * act * shape.num_layers
    if choices.offloads_optimizer:
        host_bytes += 2 * shape.trainable_params / ranks * act  # gradients down, updated weights up
    if choices.offloads_params:
        host_bytes += (2 + recompute) * shape.total_params / ranks * act
    offload = host_bytes / (device.host_link_gbps * 1e9)
    if choices.offloads_optimizer:  # every GPU's partition is stepped by its node's CPUs
        offload += shape.trainable_params / ranks * min(layout.gpus, layout.gpus_per_node) / HOST_ADAM_PARAMS_PER_S
    return StepTime(
        dense_s=dense / (peak * device.dense_efficiency), attention_s=attention / (peak * device.attention_efficiency),
        vision_s=vision / (peak * device.dense_efficiency), ulysses_s=ulysses, ring_exposed_s=ring_exposed,
        zero_s=zero, offload_s=offload, model_tflop=(dense + attention + vision) / 1e12,
    )


def _vision_flops(shape: ModelShape, layout: Layout, workload: Workload, choices: TrainingChoices,
                  recompute: int) -> float:
    if not workload.frames:
        return 0.0
    frames = workload.frames * choices.micro_batch / layout.sp
    width, inner, patches = shape.vision_hidden_size, shape.vision_intermediate_size, shape.vision_patches
    per_patch_layer = 2 * (4 * width * width + 2 * width * inner) + 4 * patches * width
    trains = "vision_tower" in choices.trains
    if choices.vision_chunk_frames:
        recompute = 1  # the chunk's whole tower runs again in the backward
    passes = (1 + recompute + 2) if trains else 1
    # only the layers before the selected hidden state run (26 of SigLIP-so400m's 27 at VILA's -2)
    return frames * patches * per_patch_layer * shape.vision_layers_run * passes
