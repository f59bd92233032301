"""What a plan trains: the stage, the sequence (text tokens, or video frames turned into tokens) and the choices
that change memory and speed (ZeRO stage, LoRA, checkpointing and its offload, MLP tiling, the loss, precision, and
for video the MM-SP path and the vision tower's chunk).

Stage names and what each trains come from the stage modules themselves (``longvila.stages.<name>.SPEC``).
"""

from __future__ import annotations

from dataclasses import dataclass

from longvila.model.media_expansion import video_positions
from longvila.model.vlm import DEFAULT_VISION_CHUNK_FRAMES

DEEPSPEED_CONFIGS = ("zero2", "zero2_offload", "zero3", "zero3_offload")
"""The packaged DeepSpeed configs a plan chooses between, cheapest in time first."""
NOT_YET_RUN_ON_GPU = frozenset({
    ("deepspeed", "zero2_offload"),
    ("deepspeed", "zero3_offload"),
    ("gradient_checkpointing", "offload"),
})
"""Training choices (flag, value) that the planner may recommend for a GPU run but that have never run on a GPU.

The offload paths (DeepSpeed's ZeRO optimizer/weight offload, ``--gradient_checkpointing offload``) have run only on
CPU (tests/stages/test_offload.py, tests/engine/test_activation_offload.py), where DeepSpeed's activation offload
moves nothing (longvila/engine/activation_offload.py). A plan for a CUDA device marks each of these choices "not
yet run on a GPU" (``TrainingChoices.not_yet_run_on_gpu``, printed and in the JSON by ``longvila/plan/report.py``).
Remove an entry once a test marked ``gpu`` (``pytest -m gpu``) trains with that choice on a GPU and has passed
there."""
MMSP_IMPLS = ("route", "gather")
"""How frame features reach their sequence shard: ``route`` is what longvila trains with; ``gather`` is LongVILA's
own MM-SP (and longvila's before 2026-12-05), planned to compare against, not a trainer flag."""
VIDEO_TEXT_TOKENS = 256
"""Prompt and answer tokens assumed beside a video's frames when only ``--num_video_frames`` is given."""


@dataclass(frozen=True)
class Workload:
    """One sample's length: ``tokens`` positions in the LLM, of which ``frames`` video frames (0 for text)."""

    tokens: int
    frames: int = 0

    @classmethod
    def from_frames(cls, frames: int, tokens_per_frame: int, text_tokens: int = VIDEO_TEXT_TOKENS) -> "Workload":
        """Each frame is its projected tokens plus one newline embedding (VILA's video layout)."""
        if frames < 1:
            raise ValueError(f"--num_video_frames must be at least 1, got {frames}")
        return cls(tokens=video_positions(frames, tokens_per_frame) + text_tokens, frames=frames)


@dataclass(frozen=True)
class TrainingChoices:
    """The memory/speed choices of one run (all decided: the search fills in what the user left open)."""

    stage: str = "s4_context_ext"
    deepspeed: str = "zero2"
    """A packaged DeepSpeed config (``longvila/recipes/``): zero2, zero2_offload (Adam state and fp32 master
    weights in host memory), zero3, zero3_offload (those and the bf16 weights in host memory)."""
    lora: bool = False
    checkpointing: str = "true"
    """``--gradient_checkpointing``: true | false | offload (checkpointed layer inputs in host memory)."""
    tiled_mlp_tokens: int = 4096
    loss_impl: str = "chunked"
    bf16: bool = True
    micro_batch: int = 1
    mmsp: str = "route"
    """``--mmsp_impl`` (``MMSP_IMPLS``): ``route`` (what longvila trains with: each rank moves only its own frames
    and sends each frame's features by all-to-all-v straight to the ranks holding their positions; text embedded
    after sharding, no full-length tensor on any rank) | ``gather`` (LongVILA's MM-SP, and longvila's until
    2026-12-05, planned for comparison: every rank moves every frame, all-gathers every frame's features and
    builds the whole embedded sequence before taking its shard)."""
    vision_chunk_frames: int = DEFAULT_VISION_CHUNK_FRAMES
    """``--vision_chunk_frames`` (either MM-SP path; default the trainer's): the rank's frames go through the tower
    this many at a time, each chunk recomputed whole in the backward; 0 encodes them in one pass with the tower's
    per-layer checkpoints (with ``--mmsp_impl gather``: LongVILA's path)."""

    def __post_init__(self) -> None:
        if self.deepspeed not in DEEPSPEED_CONFIGS:
            raise ValueError(f"--deepspeed must be one of {', '.join(DEEPSPEED_CONFIGS)}, got {self.deepspeed!r}")
        if self.checkpointing not in ("true", "false", "offload"):
            raise ValueError(f"--gradient_checkpointing must be true, false or offload, got {self.checkpointing!r}")
        if self.loss_impl not in ("chunked", "naive"):
            raise ValueError(f"--loss_impl must be chunked or naive, got {self.loss_impl!r}")
        if self.tiled_mlp_tokens < 0 or self.micro_batch < 1:
            raise ValueError("--tiled_mlp_tokens must be >= 0 and --per_device_train_batch_size >= 1")
        if self.mmsp not in MMSP_IMPLS:
            raise ValueError(f"--mmsp_impl must be one of {', '.join(MMSP_IMPLS)}, got {self.mmsp!r}")
        if self.vision_chunk_frames < 0:
            raise ValueError(f"--vision_chunk_frames must be >= 0, got {self.vision_chunk_frames}")

    @property
    def zero_stage(self) -> int:
        return 3 if self.deepspeed.startswith("zero3") else 2

    @property
    def offloads_optimizer(self) -> bool:
        return self.deepspeed.endswith("_offload")

    @property
    def offloads_params(self) -> bool:
        return self.deepspeed == "zero3_offload"

    @property
    def not_yet_run_on_gpu(self) -> tuple[str, ...]:
        """This run's choices in ``NOT_YET_RUN_ON_GPU``, as command-line flags (``--deepspeed zero3_offload``)."""
        flags = {"deepspeed": self.deepspeed, "gradient_checkpointing": self.checkpointing}
        return tuple(f"--{flag} {value}" for flag, value in sorted(NOT_YET_RUN_ON_GPU) if flags.get(flag) == value)

    @property
    def trains(self) -> frozenset:
        from longvila.stages import stage_spec

        return stage_spec(self.stage).trains
