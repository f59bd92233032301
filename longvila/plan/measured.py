"""Predictions for runs that were measured, so the planner's error can be stated and tested.

A measured run is described by the settings ``benchmarks/long_context_memory.py`` records with each row (LLM shape,
depth, LoRA, SP and ring degree, DeepSpeed config, tokens, system) or by a stage run's own ``metrics.jsonl`` and the
flags it ran with. The probes are fp32 CPU runs of one stage-4 step, so they are predicted with ``--device cpu``
(the resident-set peak, runtime included) and the probes' vision tower depth.

``benchmarks/long_video_memory.py`` rows (stage 5 on videos, old and new MM-SP) are predicted the same way by
``predict_video_row`` / ``compare_video_rows``. Which rows the model's constants were fitted on, and which are held
out, is ``longvila.plan.heldout``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from longvila.plan.hardware import cpu_device
from longvila.plan.layout import Layout
from longvila.plan.memory import MemoryBreakdown, predict_memory
from longvila.plan.model_shape import ModelShape, resolve_model_shape
from longvila.plan.workload import TrainingChoices, Workload

BENCHMARK_SYSTEMS = {
    "naive": {"loss_impl": "naive", "tiled_mlp_tokens": 0},
    "chunked": {"tiled_mlp_tokens": 0},
    "default": {},
}
"""The long-context memory benchmark's systems of ours as training choices (its flags are
``system_flags``); ALST's rows are not our trainer."""
PROBE_VISION_LAYERS = 2
"""``build_real_shape_checkpoint``'s default tower depth (stage 4 never runs the tower; its weights still count)."""
VIDEO_SYSTEMS = {
    "old": {"mmsp": "gather", "vision_chunk_frames": 0},
    "new": {"mmsp": "route", "vision_chunk_frames": 8},
    "tower_layer_checkpoints": {"mmsp": "route", "vision_chunk_frames": 0},
}
"""The long-video memory benchmark's systems that the device model predicts, as training choices (its flags are
``benchmarks/long_video_memory.py``'s ``SYSTEMS``; both run with ``--dataloader_num_workers 0``, decoding inline).
``new`` runs the trainer's default chunk: 8 frames when the 2026-12-05 result files were measured (2 since); a row
that records its ``vision_chunk_frames`` is predicted with it.
``new_ahead`` (the defaults: two loader threads decoding the next batches while the step runs) is not one: its
prefetched pixels and the decoders' buffers are host memory that a GPU's peak never holds, so the planner does
not count them; on a CPU they share the step's resident set, and its rows measure what loading ahead costs."""
VIDEO_STAGE = "s5_long_video_sft"
LIVE_PROBE = {"llm": "qwen2-0.5b", "llm_layers": 2, "vision_layers": 1}
"""The live check's probe: Qwen2-0.5B layer shapes with the real 151,936-token vocabulary, two decoder layers."""
LIVE_SP, LIVE_RING = 2, 2
"""The live check runs a zigzag ring over two gloo ranks: a layout (and depth) no constant of the memory model was
fitted on (``longvila.plan.heldout.FITTING_PROBES``), where the LLM's backward, not the fitted optimizer step, sets
the predicted peak."""
LIVE_TOKENS = 1024


@dataclass(frozen=True)
class Comparison:
    label: str
    tokens: int
    sp: int
    measured_gib: float
    predicted: MemoryBreakdown

    @property
    def error(self) -> float:
        """Relative error of the predicted peak against the measured one."""
        return self.predicted.peak_gib / self.measured_gib - 1


def system_flags(system: str) -> list[str]:
    """A benchmark system's stage flags (``--loss_impl naive --tiled_mlp_tokens 0`` for ``naive``)."""
    return [token for key, value in BENCHMARK_SYSTEMS[system].items() for token in (f"--{key}", str(value))]


def probe_step_flags(checkpoint: Path, out: Path, data_dir: Path, tokens: int) -> list[str]:
    """Stage-4 flags of one measured probe run: two fp32 optimizer steps (AdamW allocates its state in the first)
    at ``tokens`` tokens with gradient checkpointing; the measurement is the second step's peak."""
    return ["--init_from", str(checkpoint), "--output_dir", str(out), "--data_dir", str(data_dir), "--max_steps",
            "2", "--model_max_length", str(tokens), "--gradient_checkpointing", "true", "--rope_theta", "1000000",
            "--disable_tqdm", "true", "--bf16", "false"]


def predict_cpu_run(shape: ModelShape, tokens: int, sp: int = 1, ring: int = 1, **choices) -> MemoryBreakdown:
    """Peak resident memory of one rank of an fp32 CPU stage-4 run with ``sp`` ranks, ``ring`` of them in the
    (zigzag) ring and the rest Ulysses."""
    return predict_memory(shape, Layout(sp, sp, sp, ring), Workload(tokens), TrainingChoices(bf16=False, **choices),
                          cpu_device())


def benchmark_configuration(row: dict) -> tuple:
    """(llm, layers, LoRA, SP, ring, DeepSpeed config) of a long-context memory benchmark row; rows written before
    a field existed ran its default (Qwen2-1.5B, 2 layers, no LoRA, one process, Ulysses, ZeRO-2)."""
    return (row.get("llm") or "qwen2-1.5b", row.get("llm_layers") or 2, bool(row.get("lora")), row.get("sp") or 1,
            row.get("ring") or 1, row.get("deepspeed") or "zero2")


def compare_benchmark_rows(rows: list[dict]) -> list[Comparison]:
    """One comparison per row of ours in a long-context memory benchmark result file.

    The measured value is the second step's own peak where the row has it, else the run's peak (rows written before
    ``step_peak_gb`` existed; after loading, the run's peak is a step's).
    """
    shapes: dict[tuple, ModelShape] = {}
    out = []
    for row in rows:
        if row["system"] not in BENCHMARK_SYSTEMS:
            continue
        llm, layers, lora, sp, ring, deepspeed = benchmark_configuration(row)
        key = (llm, layers, lora)
        if key not in shapes:
            shapes[key] = resolve_model_shape(llm, lora=lora, num_layers=layers, vision_layers=PROBE_VISION_LAYERS)
        predicted = predict_cpu_run(shapes[key], row["tokens"], sp, ring, lora=lora, deepspeed=deepspeed,
                                    **BENCHMARK_SYSTEMS[row["system"]])
        layout = f", ring {ring}" if ring > 1 else ""
        label = (f"{llm} {layers}L{' LoRA' if lora else ''}{layout}{', ' + deepspeed if deepspeed != 'zero2' else ''}"
                 f", {row['system']}")
        out.append(Comparison(label, row["tokens"], sp, row.get("step_peak_gb") or row["peak_gb"], predicted))
    return out


def video_probe_shape(probe: str = "qwen2-0.5b-1L-siglip-1L", lora_vision: bool = False) -> ModelShape:
    """The shape of a long-video benchmark probe from its name (``<llm>-<N>L-siglip-<M>L``), trained as stage 5
    trains it (tower, projector and LLM; with ``lora_vision`` the tower's base weights frozen under LoRA adapters,
    as ``--lora_vision``). The default probe: Qwen2-0.5B shapes with one decoder layer and the real vocabulary,
    SigLIP-so400m shapes with one layer (at select layer -2 the tower runs its patch embedding only),
    ``mlp_downsample``."""
    from longvila.stages import stage_spec

    llm, layers, _, vision_layers = probe.rsplit("-", 3)
    if not (layers.endswith("L") and vision_layers.endswith("L")):
        raise ValueError(f"not a long-video probe name: {probe!r}")
    return resolve_model_shape(llm, trains=stage_spec(VIDEO_STAGE).trains, num_layers=int(layers[:-1]),
                               vision_layers=int(vision_layers[:-1]), lora_vision=lora_vision)


def predict_video_row(shape: ModelShape, row: dict) -> MemoryBreakdown:
    """Peak resident memory of one rank of a long-video benchmark row: fp32 on CPU (the host's memory is the device,
    runtime included, as ``predict_cpu_run``), stage 5, one sample of ``row["frames"]`` frames and ``row["tokens"]``
    positions per device batch, SP ``row["sp"]`` of which ring ``row["ring"]``, ZeRO-2, gradient checkpointing, the
    row's system's MM-SP path and tower chunk (the row's ``vision_chunk_frames`` where it records one)."""
    sp, ring = row.get("sp") or 1, row.get("ring") or 1
    system = {**VIDEO_SYSTEMS[row["system"]], **({"vision_chunk_frames": row["vision_chunk_frames"]}
                                                 if row.get("vision_chunk_frames") is not None else {})}
    choices = TrainingChoices(stage=VIDEO_STAGE, bf16=False, **system)
    return predict_memory(shape, Layout(sp, sp, sp, ring), Workload(row["tokens"], row["frames"]), choices,
                          cpu_device())


def compare_video_rows(rows: list[dict]) -> list[Comparison]:
    """One comparison per ``old`` / ``new`` row of a long-video memory benchmark result file, against the row's
    ``step_peak_gb`` (the last step's resident-set peak, max over ranks, in GiB). ``new_ahead`` rows are left out
    (``VIDEO_SYSTEMS``: their loader threads' prefetched batches are host memory the device model does not count)."""
    shapes: dict[tuple, ModelShape] = {}
    out = []
    for row in rows:
        if row["system"] not in VIDEO_SYSTEMS:
            continue
        key = (row.get("probe") or "qwen2-0.5b-1L-siglip-1L", bool(row.get("lora_vision")))
        if key not in shapes:
            shapes[key] = video_probe_shape(*key)
        sp, ring = row.get("sp") or 1, row.get("ring") or 1
        layout = f", ring {ring}" if ring > 1 else ""
        label = f"{key[0]}{' tower LoRA' if key[1] else ''}{layout}, {row['system']}, {row['frames']} frames"
        out.append(Comparison(label, row["tokens"], sp, row["step_peak_gb"], predict_video_row(shapes[key], row)))
    return out


def build_live_probe(folder: Path) -> Path:
    from longvila.model.real_shapes import build_real_shape_checkpoint

    return build_real_shape_checkpoint(folder, **LIVE_PROBE)


def live_comparison(checkpoint: Path, workdir: Path, tokens: int = LIVE_TOKENS, env: dict | None = None) -> Comparison:
    """Train ``checkpoint`` for two fp32 stage-4 steps as a zigzag ring over ``LIVE_SP`` fresh gloo ranks (the
    host's cores split between them) and compare the second step's own peak (max over ranks) with the prediction
    made from the folder. Fresh processes, so nothing else is resident."""
    from longvila.engine.metrics import read_metrics

    out = Path(workdir) / "run"
    threads = max(1, (os.cpu_count() or 1) // LIVE_SP)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(LIVE_SP),
         "-m", "longvila.stages.s4_context_ext", *probe_step_flags(checkpoint, out, Path(workdir) / "data", tokens),
         "--seq_parallel_size", str(LIVE_SP), "--seq_parallel_ring_size", str(LIVE_RING)],
        capture_output=True, text=True, env={**(os.environ if env is None else env), "OMP_NUM_THREADS": str(threads)})
    if result.returncode != 0:
        raise RuntimeError(f"the live stage-4 run failed: {result.stderr[-2000:]}")
    measured = read_metrics(out)[1]["step_peak_memory_gb"]
    predicted = predict_cpu_run(resolve_model_shape(str(checkpoint)), tokens, LIVE_SP, LIVE_RING)
    return Comparison(f"{LIVE_PROBE['llm']} {LIVE_PROBE['llm_layers']}L (VILA folder), ring {LIVE_RING}, default, "
                      "live", tokens, LIVE_SP, measured, predicted)
