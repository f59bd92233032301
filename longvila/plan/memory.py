"""Peak memory of one rank in one training step, term by term.

The peak is the larger of two phases of a step; it is never the sum of everything:

- **backward**: what persists (weights, optimizer state, DeepSpeed's gradient bucket, the runtime) plus the larger
  of the checkpointed activations and the gradients (the backward frees one layer's checkpoint as it produces that
  layer's gradients, so the two trade places; the trainable embedding's gradient arrives last, after every layer's
  transient is gone) plus the larger of the loss's buffers and, after the loss, the LM head's gradient with one
  layer's recompute-and-backward transient and its communication buffers, plus the vision tower's activations and
  the video's pixels and features (made in the forward, held until their gradients have gone back: the whole
  backward).
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

Video is counted term by term; N frames per sample, B samples, S tokens. ``--mmsp_impl`` picks how features reach
their positions and ``--vision_chunk_frames`` how the tower runs; the two are independent (the trainer chunks the
tower on either path), and the old MM-SP is ``--mmsp_impl gather --vision_chunk_frames 0``.

- **pixels** (``video_pixels_gib``), held until the tower's backward: ``route`` moves only the rank's
  ceil(N*B / SP) frames, cast to the training dtype as they move (a blocking ``.to(device, dtype)`` converts on the
  host, so no fp32 copy reaches the device); ``gather`` moves every frame of the batch in the processor's fp32 on
  every rank before the encoder takes its slice (which also keeps them: a saved chunk input or, in fp32, the slice
  is a view of them) and, in bf16, casts the rank's frames.
- **vision tower** (``vision_tower_gib``): with a chunk the rank's frames go through ``--vision_chunk_frames`` at a
  time, each chunk keeping only its input (a slice of the pixels, counted there) and recomputed whole in the
  backward, without per-layer checkpoints inside: one chunk's activations, every tower layer's saved tensors
  (``VISION_LAYER_SAVED``) plus one layer's backward (``VISION_TRANSIENT``), whatever N. Without a chunk it keeps one
  per-layer checkpoint per tower layer for every frame of the rank (``--gradient_checkpointing false``: every
  layer's tensors), plus one layer's transient. A frozen tower runs without a graph: one chunk's (no chunk: all the
  rank's frames') forward at a time. The projector's activations inside a chunk (under 1% of the tower's) are not
  counted.
- **features** (``video_features_gib``), each with its gradient: the projector's output for the rank's frames (what
  it sends), and ``route``: the rows it receives from the all-to-all-v (about S_media / SP, S_media = N*B x tokens
  per frame); ``gather``: every frame's gathered features and the whole embedded sequence (S x H), both replicated
  on every SP rank. The rank's embedded shard (S / SP x H, text embedded after sharding) is layer 0's input,
  already counted with the checkpointed activations. At SP 1 nothing is sent and the two paths are the same.
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
VISION_LAYER_SAVED = {"hidden": 8, "mlp": 2}
"""SigLIP layer tensors (per patch) that one layer's forward saves for its backward when nothing inside the tower is
checkpointed, as in a chunk's whole-tower recompute: the two layer norms' inputs and outputs, q, k, v, the
attention output and the output projection's input (hidden width); fc1's output, which the GELU saves, and the
GELU's output, which fc2 saves (MLP width). Counted from the layer's code, not yet measured: to be checked against
the CPU probe ``benchmarks/long_video_memory.py``."""
PIXEL_CHANNELS = 3
PROCESSOR_PIXEL_BYTES = 4
"""The image processor hands over fp32 pixels; the ``gather`` path moves them to the device as they are."""


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
    """The tower's activations for this rank's frames: one chunk's whole-tower recompute, or (unchunked) per-layer
    checkpoints of every frame of the rank; plus one layer's backward."""
    video_pixels_gib: float
    """Frames' pixels on the device (``route``: the rank's, in the training dtype; ``gather``: every frame in fp32
    and, in bf16, the rank's cast copy), held through the backward."""
    video_features_gib: float
    """Projected frame features this rank sends and receives (``gather``: the gathered features and the whole
    embedded sequence), with their gradients."""
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
        return (self.persistent_gib + self.video_pixels_gib + self.video_features_gib
                + max(self.checkpointed_activations_gib, self.layer_gradients_gib)
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
    return MemoryBreakdown(
        weights_gib=weights / GiB, optimizer_state_gib=optimizer_state / GiB,
        optimizer_step_gib=optimizer_step / GiB, checkpointed_activations_gib=checkpoints / GiB,
        layer_transient_gib=transient / GiB, loss_gib=loss / GiB, communication_gib=communication / GiB,
        vision_tower_gib=_vision_tower(shape, layout, workload, choices, act) / GiB,
        video_pixels_gib=_video_pixels(shape, layout, workload, choices, act) / GiB,
        video_features_gib=_video_features(shape, layout, workload, choices, act) / GiB,
        runtime_gib=device.runtime_gib, host_offload_gib=host / GiB,
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


def _rank_frames(layout: Layout, workload: Workload, choices: TrainingChoices) -> int:
    """Frames this rank encodes: the balanced split (``split_frames``) gives every SP rank ceil(N x B / SP), the tail
    ranks padding with dummy frames."""
    return -(-workload.frames * choices.micro_batch // layout.sp)


def _video_pixels(shape: ModelShape, layout: Layout, workload: Workload, choices: TrainingChoices,
                  act: int) -> float:
    """``route``: the rank's own frames in the training dtype; ``gather``: every frame of the batch in fp32, and in
    bf16 the rank's frames cast for the tower."""
    if not workload.frames:
        return 0.0
    own = _rank_frames(layout, workload, choices)
    per_frame = PIXEL_CHANNELS * shape.vision_image_size ** 2
    if choices.mmsp == "route":
        return own * per_frame * act
    moved = workload.frames * choices.micro_batch * per_frame * PROCESSOR_PIXEL_BYTES
    return moved + (own * per_frame * act if choices.bf16 else 0)


def _vision_tower(shape: ModelShape, layout: Layout, workload: Workload, choices: TrainingChoices,
                  act: int) -> float:
    """SigLIP on this rank's share of the frames: one chunk's whole-tower recompute, or (``--vision_chunk_frames
    0``) per-layer checkpoints of all the rank's frames."""
    if not workload.frames:
        return 0.0
    frames = _rank_frames(layout, workload, choices)
    chunk = choices.vision_chunk_frames
    c = VISION_TRANSIENT
    layer_transient = (c["hidden"] * shape.vision_hidden_size + c["mlp"] * shape.vision_intermediate_size) * act
    trains = "vision_tower" in choices.trains
    if chunk:
        patches = min(chunk, frames) * shape.vision_patches
        if not trains:
            return patches * layer_transient / 2  # no graph: one chunk's forward at a time, nothing kept
        v = VISION_LAYER_SAVED
        saved = (v["hidden"] * shape.vision_hidden_size + v["mlp"] * shape.vision_intermediate_size) * act
        return patches * (shape.vision_layers * saved + layer_transient)  # the chunk's input is in the pixels
    patches = frames * shape.vision_patches
    transient = patches * layer_transient
    if not trains:
        return transient / 2  # forward only: no backward tensors, nothing kept
    kept = patches * shape.vision_hidden_size * act * shape.vision_layers if choices.checkpointing != "false" \
        else transient * shape.vision_layers
    return kept + transient


def _video_features(shape: ModelShape, layout: Layout, workload: Workload, choices: TrainingChoices,
                    act: int) -> float:
    """Rows of LLM width, each with its gradient: the projector's output for the rank's frames, then ``route``: the
    rows the all-to-all-v delivers (the media positions of the rank's shard); ``gather``: every frame's features and
    the whole embedded sequence, on every rank. At SP 1 nothing moves and there is no other copy of the sequence."""
    if not workload.frames:
        return 0.0
    media = workload.frames * choices.micro_batch * shape.tokens_per_frame
    own = _rank_frames(layout, workload, choices) * shape.tokens_per_frame
    moved = sequence = 0
    if layout.sp > 1 and choices.mmsp == "route":
        moved = -(-media // layout.sp)
    elif layout.sp > 1:
        moved, sequence = media, workload.tokens * choices.micro_batch
    return 2 * (own + moved + sequence) * shape.hidden_size * act
