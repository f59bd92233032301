"""The search: every layout and open choice is scored, ruled out with its reasons, or kept; the best is the plan.

Order of preference among runs that fit: full fine-tuning before LoRA (LoRA changes what is learnt, so it is only
chosen when nothing else fits), then the highest predicted throughput (samples per second over the cluster). A layout the user fixed that breaks a rule is
reported with its reasons, and the best layout with the SP degree left open is offered beside it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from longvila.plan.command import launch_command
from longvila.plan.hardware import Device
from longvila.plan.layout import Layout, candidate_layouts, kv_replication, layout_problems
from longvila.plan.memory import MemoryBreakdown, predict_memory
from longvila.plan.model_shape import ModelShape, resolve_model_shape
from longvila.plan.step_time import StepTime, predict_step_time
from longvila.plan.workload import DEEPSPEED_CONFIGS, DEFAULT_VISION_CHUNK_FRAMES, TrainingChoices, Workload


@dataclass(frozen=True)
class PlanRequest:
    """What the user asked for; ``None`` means "search it"."""

    model: str
    device: Device
    gpus: int = 1
    gpus_per_node: int = 8
    stage: str = "s4_context_ext"
    model_max_length: int | None = None
    num_video_frames: int | None = None
    vision_tower: str | None = None
    num_layers: int | None = None
    vision_layers: int | None = None
    seq_parallel_size: int | None = None
    seq_parallel_ring_size: int | None = None
    zero_stage: int | None = None
    deepspeed: str | None = None
    lora: bool | None = None
    gradient_checkpointing: str | None = None
    tiled_mlp_tokens: int = 4096
    loss_impl: str = "chunked"
    bf16: bool | None = None
    mmsp_impl: str = "route"
    vision_chunk_frames: int = DEFAULT_VISION_CHUNK_FRAMES
    host_memory_gb: float | None = None
    """Per node; only activation offload uses it. ``None``: 2 TB on GPU nodes, the device's memory on CPU."""

    def __post_init__(self) -> None:
        if self.gpus < 1 or self.gpus_per_node < 1:
            raise ValueError(f"--gpus and --gpus_per_node must be positive, got {self.gpus} and {self.gpus_per_node}")
        if (self.model_max_length is None) == (self.num_video_frames is None):
            raise ValueError("give exactly one of --model_max_length (text) and --num_video_frames (video)")
        if self.model_max_length is not None and self.model_max_length < 1:
            raise ValueError(f"--model_max_length must be positive, got {self.model_max_length}")
        if not self.device.is_cuda and self.gradient_checkpointing == "offload":
            raise ValueError("--gradient_checkpointing offload needs CUDA; on --device cpu use true or false")

    @property
    def rank_budget_gib(self) -> float:
        """What one rank may use: a GPU's usable memory; on ``--device cpu`` the host's memory shared by its ranks."""
        if self.device.is_cuda:
            return self.device.budget_gib
        return self.device.budget_gib / min(self.gpus, self.gpus_per_node)

    @property
    def host_budget_gib(self) -> float:
        if self.host_memory_gb is not None:
            return self.host_memory_gb
        return 2000.0 if self.device.is_cuda else self.device.memory_gib


@dataclass(frozen=True)
class Candidate:
    layout: Layout
    choices: TrainingChoices
    memory: MemoryBreakdown | None
    time: StepTime | None
    problems: tuple[str, ...]

    @property
    def fits(self) -> bool:
        return not self.problems


@dataclass
class Plan:
    request: PlanRequest
    shape: ModelShape
    workload: Workload
    best: Candidate | None
    """The chosen run; when nothing fits, the candidate that comes closest (its ``problems`` say why)."""
    candidates: list[Candidate] = field(default_factory=list)
    """Every (layout, choices) scored for the request."""
    alternative: Candidate | None = None
    """With a fixed SP layout that cannot run: the best run with SP left open."""
    max_tokens: int | None = None
    max_frames: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.best is not None and self.best.fits

    @property
    def rejected(self) -> list[Candidate]:
        return [c for c in self.candidates if not c.fits]

    def command(self) -> str | None:
        chosen = self.best if self.fits else self.alternative
        if chosen is None:
            return None
        return launch_command(self.request, chosen.layout, chosen.choices, self.workload,
                              self.shape.max_position_embeddings)


def _choices(request: PlanRequest) -> list[TrainingChoices]:
    bf16 = request.device.is_cuda if request.bf16 is None else request.bf16
    configs = [request.deepspeed] if request.deepspeed else [
        name for name in DEEPSPEED_CONFIGS if request.zero_stage in (None, 3 if name.startswith("zero3") else 2)]
    loras = [request.lora] if request.lora is not None else [False, True]
    if request.gradient_checkpointing:
        modes = [request.gradient_checkpointing]
    else:
        modes = ["true", "offload"] if request.device.is_cuda else ["true"]
    return [TrainingChoices(stage=request.stage, deepspeed=ds, lora=lo, checkpointing=m,
                            tiled_mlp_tokens=request.tiled_mlp_tokens, loss_impl=request.loss_impl, bf16=bf16,
                            mmsp=request.mmsp_impl, vision_chunk_frames=request.vision_chunk_frames)
            for ds, lo, m in itertools.product(configs, loras, modes)]


def _shape(request: PlanRequest, lora: bool, cache: dict) -> ModelShape:
    if lora not in cache:
        trains = TrainingChoices(stage=request.stage).trains
        cache[lora] = resolve_model_shape(request.model, request.vision_tower, trains, lora=lora,
                                          num_layers=request.num_layers, vision_layers=request.vision_layers)
    return cache[lora]


def _workload(request: PlanRequest, shape: ModelShape) -> Workload:
    if request.num_video_frames is not None:
        return Workload.from_frames(request.num_video_frames, shape.tokens_per_frame)
    return Workload(request.model_max_length)


def evaluate(request: PlanRequest, shape: ModelShape, layout: Layout, choices: TrainingChoices,
             workload: Workload) -> Candidate:
    """Score one (layout, choices): its rule problems, else its memory and time and whether they fit."""
    problems = layout_problems(layout, shape.num_q_heads, shape.num_kv_heads, workload.tokens)
    if problems:
        return Candidate(layout, choices, None, None, tuple(problems))
    memory = predict_memory(shape, layout, workload, choices, request.device)
    time = predict_step_time(shape, layout, workload, choices, request.device)
    if memory.peak_gib > request.rank_budget_gib:
        problems.append(f"needs {memory.peak_gib:.1f} GiB per rank ({memory.peak_phase} peak) > "
                        f"{request.rank_budget_gib:.1f} GiB usable on {request.device.name}")
    host = memory.host_offload_gib * min(layout.gpus, layout.gpus_per_node)
    if host > request.host_budget_gib:
        problems.append(f"offload needs {host:.0f} GiB of host memory per node > {request.host_budget_gib:.0f} GiB")
    return Candidate(layout, choices, memory, time, tuple(problems))


def _preference(candidate: Candidate) -> tuple:
    """Full fine-tuning first, then the most samples per second over the whole cluster (a layout with more DP
    replicas trains more samples per step)."""
    return (candidate.choices.lora, candidate.time.total_s / candidate.layout.dp)


def _search(request: PlanRequest, sp: int | None, ring: int | None, cache: dict):
    layouts = candidate_layouts(request.gpus, request.gpus_per_node, sp, ring)
    scored = []
    for choices in _choices(request):
        shape = _shape(request, choices.lora, cache)
        workload = _workload(request, shape)
        scored += [evaluate(request, shape, layout, choices, workload) for layout in layouts]
    fitting = [c for c in scored if c.fits]
    if fitting:
        return min(fitting, key=_preference), scored
    measured = [c for c in scored if c.memory is not None]
    return (min(measured, key=lambda c: c.memory.peak_gib) if measured else None), scored


def plan(request: PlanRequest) -> Plan:
    """Search the open choices for ``request`` and return the plan (see ``Plan``)."""
    cache: dict = {}
    best, scored = _search(request, request.seq_parallel_size, request.seq_parallel_ring_size, cache)
    alternative = None
    fixed = request.seq_parallel_size is not None or request.seq_parallel_ring_size is not None
    if fixed and (best is None or not best.fits):
        alternative, _ = _search(request, None, None, cache)
        alternative = alternative if alternative is not None and alternative.fits else None
    chosen = best if best is not None and best.fits else alternative
    lora = (chosen or best).choices.lora if (chosen or best) else bool(request.lora)
    shape = _shape(request, lora, cache)
    result = Plan(request, shape, _workload(request, shape), best, scored, alternative)
    if chosen is not None:
        _reach(result, chosen)
        _notes(result, chosen)
    return result


def _reach(result: Plan, chosen: Candidate) -> None:
    """The longest sequence (or most frames) that still fits with the chosen layout and choices."""
    request, shape = result.request, result.shape
    video = request.num_video_frames is not None

    def fits(n: int) -> bool:
        workload = Workload.from_frames(n, shape.tokens_per_frame) if video else Workload(n)
        return evaluate(request, shape, chosen.layout, chosen.choices, workload).fits

    step = 1 if video else 2 * chosen.layout.sp
    low = request.num_video_frames if video else request.model_max_length
    if not fits(low):
        return
    high = low * 2
    while fits(high) and high < 2**34:
        low, high = high, high * 2
    while high - low > step:
        middle = (low + high) // 2 // step * step
        if middle <= low:
            break
        low, high = (middle, high) if fits(middle) else (low, middle)
    if video:
        result.max_frames = low
        result.max_tokens = Workload.from_frames(low, shape.tokens_per_frame).tokens
    else:
        result.max_tokens = low


def _notes(result: Plan, chosen: Candidate) -> None:
    layout, shape = chosen.layout, result.shape
    copies = kv_replication(shape.num_q_heads, shape.num_kv_heads, layout.ulysses)
    if copies > 1:
        result.notes.append(f"each of the {shape.num_kv_heads} kv heads is replicated {copies}x so that every one "
                            f"of the {layout.ulysses} Ulysses ranks holds one (counted in memory and traffic)")
    multiple = 2 * layout.sp if layout.sp > 1 else 1
    if result.workload.tokens % multiple:
        result.notes.append(f"{result.workload.tokens} tokens are padded to a multiple of {multiple} (2 x SP) for "
                            "the zigzag split")
    if result.workload.frames:
        result.notes.append(f"{result.workload.frames} frames x ({shape.tokens_per_frame} + 1 newline) tokens + "
                            f"text = {result.workload.tokens} tokens per sample")
