"""Peak memory of one rank in one training step, term by term.

The peak is the largest of three phases of a step (two without video); it is never the sum of everything:

- **backward** (the LLM's layers): what persists (weights, optimizer state, DeepSpeed's gradient bucket, the runtime)
  plus the larger of the checkpointed activations and the gradients (the backward frees one layer's checkpoint as it
  produces that layer's gradients, so the two trade places; the trainable embedding's gradient arrives last, after
  every layer's transient is gone) plus the larger of the loss's buffers and, after the loss, the LM head's gradient
  with one layer's recompute-and-backward transient and its communication buffers, plus what video keeps from the
  forward until the tower's backward: the pixels and (unchunked tower) its per-layer checkpoints and the
  projector's saved tensors.
- **vision backward**: after the LLM's layers (their checkpoints and transient are gone; the LM head's and the
  layers' gradients are still there) the features' gradients come back through MM-SP beside what the tower kept,
  then the tower runs its backward, consuming it: one chunk's recompute and backward, or (unchunked) each step
  over all the rank's frames.
- **optimizer step**: what persists plus the fp32 gradient partition the step reads and Adam's temporaries.

Offload (``zero2_offload`` / ``zero3_offload``, ``--gradient_checkpointing offload``) moves terms to host memory:
the optimizer's 16 bytes per trainable parameter (fp32 gradients, master, two moments) plus the step's
temporaries; ZeRO-3's weight partition; every layer's checkpoint.

DeepSpeed ZeRO (``longvila/recipes/zero2.json``: ZeRO-2 keeps full weights; ``zero3.json`` partitions them too) keeps an
fp32 master partition and Adam's two moments, 12 bytes per trainable parameter over the DP x SP ranks, even when
training in fp32. ZeRO-3 also keeps the parameters a step uses gathered, up to ``STAGE3_LIVE_ELEMENTS`` of them
(DeepSpeed's reuse-distance default), beside every parameter's partition, and its gradient partitions in one flat
buffer allocated at start-up (ZeRO-2's partitions form during the backward). Checked once, on CPU, and short: a
2-layer Qwen2-0.5B-shape probe at SP 2 measured 5.12 GiB per rank against 4.29 predicted
(``benchmarks/results/cpu-2026-12-05-plan-heldout-sp2-qwen2-0.5b-2L-zero3.json``). The reduce bucket
(``reduce_bucket_size``, 2e8 elements) persists after the first backward; a gradient larger than the bucket (a
152K x 3584 embedding) is reduced on its own and needs its full size once.

Activation terms count elements per local token from the layer's widths: q, kv (times the replication when Ulysses
has more ranks than kv heads), hidden and MLP intermediate (tiled: one tile of ``--tiled_mlp_tokens`` rows). The
element counts per width (``LAYER_TRANSIENT``) and the naive loss's bytes per logit are the measured ones: the
long-context memory benchmark's rows (``benchmarks/results/cpu-*-long-context-memory*.json``) are reproduced within
10% by ``benchmarks/plan_accuracy.py``, which ``tests/plan/test_accuracy.py`` checks.

Video is counted term by term, from the code (``longvila/model/vlm.py``, ``longvila/distributed/mmsp.py``,
``media_routing.py``, ``longvila/engine/trainer.py``); N frames per sample, B samples, S tokens, s = S / SP on a rank.
``--mmsp_impl`` picks how features reach their positions and ``--vision_chunk_frames`` how the tower runs; the two
are independent, and LongVILA's MM-SP (longvila's until 2026-12-05, measured as the ``old`` rows of
``benchmarks/results/cpu-2026-12-05-long-video-memory-*.json``) is ``--mmsp_impl gather --vision_chunk_frames 0``. The tower runs only the layers before ``mm_vision_select_layer`` (VILA's -2: 26 of
SigLIP-so400m's 27; none of a one-layer probe's, ``ModelShape.vision_layers_run``).

- **pixels** (``video_pixels_gib``), held until the tower's backward, in the training dtype (the trainer's
  ``move_to_device`` moves and casts the whole batch, frames included); the tower keeps its input (the patch
  embedding's saved input, or each chunk's checkpointed input, is a view of it). ``route``: the loader decodes only
  the rank's ceil(N*B / SP) frames into one tensor, which is the tower's input as it is: one copy (two when dummy
  frames pad the share and are concatenated on). ``gather``: every rank decodes every frame of the batch and
  the old path's ``build_sequence`` (longvila at 61def37) concatenated them before the encoder took its slice: two copies of every frame on every rank
  (plus the rank's share again when dummy frames pad it). On a CPU the batch is in the same resident set as the
  step, so the same copies count there.
- **vision tower, held** (``vision_tower_gib``): chunked (``--vision_chunk_frames``), nothing beyond each chunk's
  input (in the pixels): the chunk's output goes into a ``cat`` that saves nothing. Unchunked, every frame of the
  rank keeps one per-layer checkpoint per layer run (``--gradient_checkpointing false``: every layer's saved
  tensors, ``VISION_LAYER_SAVED``) and the projector's saved tensors (``projector_saved_elements``: for
  ``mlp_downsample`` the LayerNorm's input and output at 4 x the tower width and the GELU's input and output, about
  8.6 MB per frame in fp32), all through the LLM's backward. A tower and projector without gradients keep nothing.
- **vision tower, transient** (``vision_transient_gib``, the vision-backward phase): chunked, one chunk's recompute
  (every layer run keeps its ``VISION_LAYER_SAVED``) and the largest step of its backward: the projector's (its
  saved tensors and its widest gradient), one layer's ``VISION_TRANSIENT``, or the patch embedding's (the gradient
  and a contiguous copy), whatever N; unchunked, the same largest step over every frame of the rank, beside the
  per-layer checkpoints (the projector's saved tensors are consumed by its own backward, so they are not counted
  twice). The rank's own features' gradient is there too. A tower without a graph runs its forward one chunk
  (unchunked: all the rank's frames) at a time, in the forward, before any LLM activation exists.
- **features** (``video_features_gib``): nothing saves them for the backward (the all-gather, the all-to-all-v, the
  sequence's ``cat`` and ``index_select`` and the embedding's ``index_put`` keep only sizes and indices), so they
  do not add to the LLM's backward. Their gradients come back after it, before the tower's backward: ``route``: the
  rank's embedded shard (s x H, waiting for the embedding's backward), the rows it received and the rank's own
  frames' rows after the all-to-all-v sends them back; ``gather``: the whole sequence's gradient (S x H, from
  ``index_select``'s backward), every frame's gathered features' gradient and the rank's own after the
  reduce-scatter, replicated on every SP rank. The forward builds the same tensors once, before the LLM has any
  activation, so it is never the larger phase. At SP 1 nothing is sent and the two paths are the same.

The video terms are counted, not fitted, and checked against ``benchmarks/long_video_memory.py`` (fp32 CPU,
Qwen2-0.5B shapes with one layer, stage 5: ``longvila.plan.measured.compare_video_rows``, in
``tests/plan/test_accuracy.py``): every old and new row of ``benchmarks/results/cpu-2026-12-05-long-video-memory-*``
(32 to 256 frames at SP 1, SP 2 and 2D SP 4) within 10%, the worst 9.3%. With one tower layer and select layer -2
that probe runs no tower layer, so it checks the pixels, the projector, the features and the phases, not
``VISION_LAYER_SAVED`` or ``VISION_TRANSIENT``.
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
STAGE3_LIVE_ELEMENTS = 1_000_000_000
"""DeepSpeed's ``stage3_max_reuse_distance`` and ``stage3_max_live_parameters`` defaults, which the packaged ZeRO-3
configs keep: after a module runs, ZeRO-3 frees its gathered parameters only when their next use is more than this
many fetched elements away (``PartitionedParameterCoordinator.__params_to_release``). A step whose used parameters
total fewer keeps every one of them gathered from its first use to the end of the backward; a larger model keeps
about this many (the layers around the turn from forward to backward)."""
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
GELU's output, which fc2 saves (MLP width). Counted from the layer's code, not yet measured: the CPU probe of
``benchmarks/long_video_memory.py`` (one tower layer, select layer -2) runs no tower layer."""
PIXEL_CHANNELS = 3


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
    """What the tower and projector keep for this rank's frames through the LLM's backward: nothing when chunked;
    unchunked, per-layer checkpoints and the projector's saved tensors of every frame of the rank."""
    video_pixels_gib: float
    """Frames' pixels on the device in the training dtype, held until the tower's backward (``route``: the rank's
    frames, once; ``gather``: every frame, twice: the batch and the encoder's ``cat``)."""
    video_features_gib: float
    """Gradients of the features coming back through MM-SP after the LLM's layers (``gather``: the whole
    sequence's and every frame's, on every rank; ``route``: the rank's shard and the rows it sent and received)."""
    vision_transient_gib: float
    """The tower's backward at its largest: one chunk's recompute and backward (unchunked: the largest backward step
    over all the rank's frames, beside the checkpoints it has not consumed yet), with the rank's features'
    gradient; without a graph, its forward's transient."""
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
        """The LLM's backward, with what video keeps from the forward."""
        return (self.persistent_gib + self.video_pixels_gib + self.vision_tower_gib
                + max(self.checkpointed_activations_gib, self.layer_gradients_gib)
                + max(self.loss_gib, self.head_gradient_gib + self.layer_transient_gib + self.communication_gib))

    @property
    def vision_backward_gib(self) -> float:
        """After the LLM's layers: the features' gradients coming back (beside what the tower keeps), then the
        tower's backward, which consumes what it kept (0 for text)."""
        if not (self.video_features_gib or self.vision_transient_gib):
            return 0.0
        return (self.persistent_gib + self.video_pixels_gib + self.layer_gradients_gib + self.head_gradient_gib
                + max(self.vision_tower_gib + self.video_features_gib, self.vision_transient_gib))

    @property
    def step_gib(self) -> float:
        return self.persistent_gib + self.optimizer_step_gib

    @property
    def peak_gib(self) -> float:
        return max(self.backward_gib, self.vision_backward_gib, self.step_gib)

    @property
    def peak_phase(self) -> str:
        phases = {"backward": self.backward_gib, "vision backward": self.vision_backward_gib,
                  "optimizer step": self.step_gib}
        return max(phases, key=phases.get)  # ties go to the first: the backward

    def as_dict(self) -> dict:
        return {**asdict(self), "backward_gib": self.backward_gib, "vision_backward_gib": self.vision_backward_gib,
                "step_gib": self.step_gib, "peak_gib": self.peak_gib, "peak_phase": self.peak_phase}


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
        # Partitions of every parameter, and the parameters the step uses gathered (module docstring).
        used = shape.llm_params + (shape.vision_params + shape.projector_params if workload.frames else 0)
        gathered = max(min(used, STAGE3_LIVE_ELEMENTS), 2 * shape.layer_params, shape.lm_head_elements)
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
        if choices.zero_stage == 3:  # gradient partitions in one flat buffer, allocated (zeroed) at start-up
            bucket += trainable / ranks * act
            layer_gradients = 0.0
        else:
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
        vision_transient_gib=_vision_transient(shape, layout, workload, choices, act) / GiB,
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
    """In the training dtype: ``route``, the rank's frames once (the loader's one tensor is the tower's input), twice
    when dummy frames pad the share (``rank_frames`` cats them on); ``gather``, every frame of the batch twice (the
    batch and the old path's ``build_sequence`` ``cat``), plus the rank's share again when dummy frames pad it."""
    if not workload.frames:
        return 0.0
    own = _rank_frames(layout, workload, choices)
    every = workload.frames * choices.micro_batch
    padded = layout.sp > 1 and every % layout.sp  # the last ranks encode dummy frames
    per_frame = PIXEL_CHANNELS * shape.vision_image_size ** 2 * act
    if choices.mmsp == "route":
        return own * per_frame * (2 if padded else 1)
    return (2 * every + (own if padded else 0)) * per_frame


def projector_saved_elements(shape: ModelShape) -> int:
    """Elements per frame the projector's forward saves for its backward (``longvila/model/projector.py``): the
    inputs of its norms, linears and GELUs, and the norms' outputs that the next linear reads."""
    c, h = shape.vision_hidden_size, shape.hidden_size
    tokens, patches, kind = shape.tokens_per_frame, shape.vision_patches, shape.projector_type
    if kind in ("mlp_downsample", "mlp_downsample_2x2_fix"):  # LayerNorm(4C) in/out, GELU in/out (width H)
        return tokens * (2 * 4 * c + 2 * h)
    if kind == "mlp_downsample_3x3_fix":  # LayerNorm(9C) in/out, GELU in (3C), LayerNorm(3C) in/out, GELU in/out
        return tokens * (2 * 9 * c + 3 * 3 * c + 2 * h)
    if kind == "linear":
        return patches * c
    depth = int(kind[len("mlp"):-len("x_gelu")])  # mlp{N}x_gelu: the first linear's input, then GELU in/out
    return patches * (c + 2 * (depth - 1) * h)


def projector_widest_elements(shape: ModelShape) -> int:
    """Elements per frame of the projector's widest activation (its widest gradient in the backward): the merged
    tokens of a downsample projector, the tower's output otherwise."""
    factor = {"mlp_downsample": 2, "mlp_downsample_2x2_fix": 2, "mlp_downsample_3x3_fix": 3}.get(shape.projector_type)
    if factor:
        return shape.tokens_per_frame * factor ** 2 * shape.vision_hidden_size
    return shape.vision_patches * shape.vision_hidden_size


def _tower_widths(shape: ModelShape, act: int) -> tuple[float, float]:
    """Bytes per patch of one tower layer: (saved by its forward, alive in its recompute and backward)."""
    v, c = VISION_LAYER_SAVED, VISION_TRANSIENT
    saved = (v["hidden"] * shape.vision_hidden_size + v["mlp"] * shape.vision_intermediate_size) * act
    transient = (c["hidden"] * shape.vision_hidden_size + c["mlp"] * shape.vision_intermediate_size) * act
    return saved, transient


def _vision_grads(choices: TrainingChoices) -> bool:
    """Whether the frames' encoding has a graph: the tower or the projector trains."""
    return bool({"vision_tower", "mm_projector"} & choices.trains)


def _vision_tower(shape: ModelShape, layout: Layout, workload: Workload, choices: TrainingChoices,
                  act: int) -> float:
    """Kept through the LLM's backward: nothing when chunked (each chunk keeps only its input, in the pixels) or
    without a graph; unchunked, every frame of the rank's per-layer checkpoints (every layer's saved tensors
    without checkpointing) and the projector's saved tensors."""
    if not workload.frames or choices.vision_chunk_frames or not _vision_grads(choices):
        return 0.0
    frames = _rank_frames(layout, workload, choices)
    layers = shape.vision_layers_run if "vision_tower" in choices.trains else 0
    saved, _ = _tower_widths(shape, act)
    per_layer = shape.vision_hidden_size * act if choices.checkpointing != "false" else saved
    return frames * (shape.vision_patches * layers * per_layer + projector_saved_elements(shape) * act)


def _vision_transient(shape: ModelShape, layout: Layout, workload: Workload, choices: TrainingChoices,
                      act: int) -> float:
    """The tower's backward after the LLM's at its largest, with the rank's features' gradient. Per frame: chunked,
    one chunk's recompute (every layer's saved tensors) and then the largest step of its backward: the projector's
    (its saved tensors and its widest gradient), one layer's recompute and backward, or the patch embedding's (the
    gradient and its contiguous copy); unchunked, the same steps over every frame of the rank beside the per-layer
    checkpoints not yet consumed (the projector's saved tensors are freed as its backward goes, so they are not
    counted twice). A frozen tower under a training projector runs its forward without a graph (in a chunk's
    recompute too). Without any graph: one chunk's (all the rank's frames') forward, in the forward."""
    if not workload.frames:
        return 0.0
    frames = _rank_frames(layout, workload, choices)
    chunk = choices.vision_chunk_frames
    at_once = min(chunk, frames) if chunk else frames
    saved, transient = _tower_widths(shape, act)
    patches, layers, width = shape.vision_patches, shape.vision_layers_run, shape.vision_hidden_size
    projector = (projector_saved_elements(shape) + projector_widest_elements(shape)) * act
    tower_forward = patches * transient / 2 if layers else 0  # a layer's forward without a graph, per frame
    if not _vision_grads(choices):
        return at_once * tower_forward
    own_gradient = frames * shape.tokens_per_frame * shape.hidden_size * act
    if "vision_tower" not in choices.trains:  # only the projector has a graph
        return own_gradient + at_once * (max(tower_forward, projector) if chunk else projector)
    step = max(projector, patches * transient if layers else 0, 2 * patches * width * act)
    if chunk:
        return own_gradient + at_once * (patches * layers * saved + step)
    checkpoints = width * act if choices.checkpointing != "false" else saved
    return own_gradient + frames * (patches * layers * checkpoints + step)


def _video_features(shape: ModelShape, layout: Layout, workload: Workload, choices: TrainingChoices,
                    act: int) -> float:
    """Gradients that come back through MM-SP after the LLM's layers, in rows of LLM width: ``route``, the rank's
    shard (for the embedding), the rows it received and its own frames' rows; ``gather``, the whole sequence, every
    frame's gathered features and the rank's own, on every rank. At SP 1 nothing moves: the rank's sequence and
    its frames' rows. Without a graph in the tower or the projector, none."""
    if not workload.frames or not _vision_grads(choices):  # features without a graph get no gradient
        return 0.0
    media = workload.frames * choices.micro_batch * shape.tokens_per_frame
    own = _rank_frames(layout, workload, choices) * shape.tokens_per_frame
    sequence = workload.tokens * choices.micro_batch
    if layout.sp == 1:
        rows = sequence + own
    elif choices.mmsp == "route":
        rows = -(-sequence // layout.sp) + -(-media // layout.sp) + own
    else:
        rows = sequence + media + own
    return rows * shape.hidden_size * act
