"""What every long-context evaluation shares: the grid, teacher-forced scoring, the runtime, JSON and heatmap.

V-NIAH (:mod:`longvila.eval.vniah`) and passkey retrieval (:mod:`longvila.eval.passkey`) differ only in how they
build one sample for a grid point (x = haystack frames or context tokens, depth = where the needle goes). Both
plug an ``evaluate(x, depth)`` callable into :func:`run_grid` and hand the cells to :func:`write_results`.

Grid
    ``x`` takes ``range(min, max + 1, step)`` (``max`` is included when the step lands on it). Depths are percents
    ``0, step, 2*step, ... <= 100``. A needle at depth ``d`` in a haystack of ``n`` units (frames or filler
    sentences) goes *before* unit ``floor(d * n / 100)`` (:func:`needle_index`, computed on exact fractions), so
    the sample has ``n + 1`` units and the needle is unit ``floor(d * n / 100)`` of them: depth 0 puts it first,
    depth 100 last.

Scoring, ``--scoring teacher_forced`` (default; the PPL-based protocol of LongVA's V-NIAH)
    ONE teacher-forced forward over prompt + answer. The argmax of the logits that predict the answer tokens is
    decoded and compared with the answer after dropping all whitespace and lower-casing (:func:`is_correct`).
    The forward is the model's own training forward (``build_sequence`` -> global label shift ->
    ``sequence_sharder`` -> backbone); only ``model.loss_fn`` is swapped for :class:`ArgmaxAtTargets`, which
    takes the argmax at the supervised positions instead of a loss. Under sequence parallelism every rank holds
    its zigzag shard, so the per-position argmax (and NLL) are gathered with
    :func:`longvila.distributed.sharding.gather_sequence` back into global order.

Scoring, ``--scoring generate``
    Greedy decoding of up to ``--max_new_tokens`` tokens after the prompt (:func:`greedy_generate`). Without
    SP it runs the prompt once and decodes with a KV cache (:mod:`longvila.eval.decode`); under SP it runs one
    full sharded forward per token through the same path as teacher forcing. It stops at the tokenizer's EOS or
    ``<|im_end|>``. The sample is correct when the normalised answer occurs in the normalised generation ("The
    shape is red." answers "Red."), the usual rule for free-form V-NIAH answers.

Parallelism
    :func:`load_runtime` initialises the process group (one process, or torchrun) and calls
    :func:`longvila.distributed.integration.install_parallelism`, so ``--seq_parallel_size N`` shards every
    sequence (and, for video, the vision encoder's frames) over N ranks. With world > SP the grid points are
    split over the data-parallel groups and gathered on every rank at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from longvila.constants import IGNORE_INDEX
from longvila.model.loss import fp32_logits

logger = logging.getLogger("longvila.eval")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class EvalError(ValueError):
    """A bad evaluation request (flags, needle file, haystack), reported as one line before any compute."""


# ----------------------------------------------------------------------------------------------------- grid
def value_range(lo: int, hi: int, step: int, name: str) -> list[int]:
    """``range(lo, hi + 1, step)`` with one-line errors naming the ``--min_<name>/--max_<name>/--<name>_step``
    flags."""
    if lo < 1:
        raise EvalError(f"--min_{name} must be >= 1, got {lo}")
    if hi < lo:
        raise EvalError(f"--min_{name} {lo} > --max_{name} {hi}")
    if step < 1:
        raise EvalError(f"--{name}_step must be >= 1, got {step}")
    return list(range(lo, hi + 1, step))


def depth_values(step: float) -> list[float]:
    """Depths in percent: 0, step, 2*step, ... up to and including 100 when the step lands on it."""
    if not 0 < step <= 100:
        raise EvalError(f"--depth_step must be in (0, 100] percent, got {step}")
    exact = Fraction(str(step))
    return [float(k * exact) for k in range(int(100 // exact) + 1)]


def needle_index(depth: float, n: int) -> int:
    """Where a needle at ``depth`` percent goes in a haystack of ``n`` units: ``floor(depth * n / 100)``.

    The needle is inserted *before* that haystack unit, so it ends up at exactly this index of the ``n + 1``
    units (0 = first, ``n`` = last). Computed on exact fractions: 10% of 30 frames is 3, not 2.9999.
    """
    if not 0 <= depth <= 100:
        raise EvalError(f"depth must be in [0, 100] percent, got {depth}")
    if n < 0:
        raise EvalError(f"haystack size must be >= 0, got {n}")
    return math.floor(Fraction(str(depth)) * n / 100)


def insert_needle(haystack, needle, depth: float):
    """``(haystack[:k] + needle + haystack[k:], k)`` with ``k = needle_index(depth, len(haystack))``.

    Works on lists (one needle item) and on tensors (``needle`` holds one unit along dim 0, e.g. (1, T, H)).
    """
    k = needle_index(depth, len(haystack))
    if isinstance(haystack, torch.Tensor):
        return torch.cat([haystack[:k], needle, haystack[k:]]), k
    return [*haystack[:k], needle, *haystack[k:]], k


# ---------------------------------------------------------------------------------------------- scoring
def normalize_answer(text: str) -> str:
    """Case-insensitive, whitespace-free form used to compare a prediction with the answer."""
    return "".join(text.split()).lower()


def is_correct(prediction: str, answer: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(answer)


class ArgmaxAtTargets:
    """Stand-in for ``model.loss_fn``: argmax and NLL at the supervised (shifted-label) positions.

    Called as ``loss_fn(hidden, lm_head_weight, shifted_labels)`` on this rank's shard. Keeps ``pred`` (argmax id,
    -1 elsewhere), ``nll`` (token NLL, 0 elsewhere) and ``labels``, all (B, S_local), and returns the (sum, count)
    the model expects. Only the answer-predicting rows go through the LM head, so no (S, V) logits are built.
    """

    def __init__(self):
        self.pred = self.nll = self.labels = None

    def __call__(self, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor):
        keep = labels != IGNORE_INDEX
        logits = fp32_logits(hidden[keep], weight)
        self.pred = torch.full_like(labels, -1)
        self.nll = torch.zeros(labels.shape, dtype=torch.float32, device=labels.device)
        if logits.shape[0]:
            self.pred[keep] = logits.argmax(-1)
            self.nll[keep] = F.cross_entropy(logits, labels[keep], reduction="none")
        self.labels = labels
        return self.nll.sum(), keep.sum().to(torch.int64)


@contextmanager
def swapped(obj, **attributes) -> Iterator[None]:
    """Temporarily set attributes (model hooks such as ``loss_fn`` or ``frame_encoder``)."""
    saved = {name: getattr(obj, name) for name in attributes}
    for name, value in attributes.items():
        setattr(obj, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(obj, name, value)


@dataclass
class TeacherForced:
    """One row's result: argmax ids and targets at the answer positions, and the answer's summed NLL."""

    predicted_ids: list[int]
    target_ids: list[int]
    nll: float


def teacher_forced(model, input_ids: torch.Tensor, labels: torch.Tensor, media=None,
                   layout=None) -> list[TeacherForced]:
    """One forward of ``model`` over (B, L) ``input_ids``; ``labels`` (unshifted) mark the answer tokens.

    Runs the model's own forward (media expansion, global shift, SP sharding, backbone) with ``loss_fn``
    swapped for :class:`ArgmaxAtTargets`; under SP the argmax/NLL/labels are gathered into global order.
    """
    capture = ArgmaxAtTargets()
    device = next(model.parameters()).device
    with torch.no_grad(), swapped(model, loss_fn=capture):
        model(input_ids=input_ids.to(device), labels=labels.to(device),
              attention_mask=torch.ones_like(input_ids, dtype=torch.bool, device=device), media=media)
    pred, nll, targets = capture.pred, capture.nll, capture.labels
    if layout is not None and layout.sp.enabled:
        from longvila.distributed.sharding import gather_sequence

        pred, nll, targets = (gather_sequence(t, layout.sp, layout.groups) for t in (pred, nll, targets))
    out = []
    for b in range(pred.shape[0]):
        keep = targets[b] != IGNORE_INDEX
        out.append(TeacherForced(pred[b][keep].tolist(), targets[b][keep].tolist(), float(nll[b][keep].sum())))
    return out


def score(tokenizer, result: TeacherForced, answer: str) -> dict:
    """Decode the argmax at the answer positions and compare it with ``answer`` (see :func:`is_correct`)."""
    prediction = tokenizer.decode(result.predicted_ids, skip_special_tokens=False)
    return {
        "answer": answer,
        "prediction": prediction,
        "correct": is_correct(prediction, answer),
        "answer_tokens": len(result.target_ids),
        "answer_nll": round(result.nll, 6),
    }


SCORING_RULES = {  # --scoring value -> the rule recorded in the results JSON
    "teacher_forced": "one teacher-forced forward; argmax at the answer positions == answer, case/space-insensitive",
    "generate": "greedy generation (stops at EOS/<|im_end|>); answer occurs in it, case/space-insensitive",
}
SCORING_MODES = tuple(SCORING_RULES)


def uses_kv_cache(layout=None, kv_cache: bool | None = None) -> bool:
    """Whether generation decodes with a KV cache: by default whenever the sequence is not sharded (SP off)."""
    sharded = layout is not None and layout.sp.enabled
    if kv_cache and sharded:
        raise ValueError("KV-cache decoding runs unsharded; under sequence parallelism use kv_cache=False")
    return not sharded if kv_cache is None else kv_cache


def greedy_generate(model, prompt_ids: torch.Tensor, stop_ids: set[int], max_new_tokens: int, media=None,
                    layout=None, kv_cache: bool | None = None) -> list[int]:
    """Greedy continuation of the 1-D ``prompt_ids``, without the stop token.

    Unsharded (the default where SP is off): one prefill and one cached step per token
    (:func:`longvila.eval.decode.cached_greedy_generate`). Under SP, or with ``kv_cache=False``, each step appends
    a placeholder token whose (dummy) label marks the one position to predict, and reads the argmax there through
    :func:`teacher_forced`: the model's own forward, so media caching and SP sharding apply. Causal attention means
    the placeholder itself never influences the prediction.
    """
    if uses_kv_cache(layout, kv_cache):
        from longvila.eval.decode import cached_greedy_generate

        return cached_greedy_generate(model, prompt_ids, stop_ids, max_new_tokens, media=media)
    generated: list[int] = []
    prompt = prompt_ids.tolist()
    for _ in range(max_new_tokens):
        ids = torch.tensor([prompt + generated + [0]])
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[0, -1] = 0
        (step,) = teacher_forced(model, ids, labels, media=media, layout=layout)
        token = step.predicted_ids[0]
        if token in stop_ids:
            break
        generated.append(token)
    return generated


def stop_token_ids(tokenizer) -> set[int]:
    """Tokens that end a generated answer: EOS and the chat template's end of turn."""
    from longvila.data.template import chat_format

    ids = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(chat_format(tokenizer).end)}
    return {i for i in ids if i is not None and i != tokenizer.unk_token_id}


def score_sample(runtime: "EvalRuntime", ids: torch.Tensor, labels: torch.Tensor, answer: str, scoring: str,
                 max_new_tokens: int, media=None, kv_cache: bool | None = None) -> dict:
    """Score one sample: ``ids``/``labels`` hold prompt + answer with labels on the answer only.

    ``teacher_forced``: one forward, the argmax at the answer positions must spell the answer (:func:`score`).
    ``generate``: greedy decoding from the prompt; the answer must occur in the generation.
    """
    if scoring == "teacher_forced":
        result = teacher_forced(runtime.model, ids[None], labels[None], media=media, layout=runtime.layout)[0]
        return score(runtime.tokenizer, result, answer)
    prompt_len = int((labels != IGNORE_INDEX).nonzero()[0])  # the answer follows the prompt
    generated = greedy_generate(runtime.model, ids[:prompt_len], stop_token_ids(runtime.tokenizer),
                                max_new_tokens, media=media, layout=runtime.layout, kv_cache=kv_cache)
    prediction = runtime.tokenizer.decode(generated, skip_special_tokens=True)
    return {
        "answer": answer,
        "prediction": prediction,
        "correct": normalize_answer(answer) in normalize_answer(prediction),
        "generated_tokens": len(generated),
    }



# ---------------------------------------------------------------------------------------------- runtime
@dataclass
class EvalRuntime:
    """A loaded model with parallelism installed, plus this rank's place in the data-parallel layout."""

    model: Any
    tokenizer: Any
    image_processor: Any
    model_path: str
    device: torch.device
    dtype: torch.dtype
    layout: Any = None  # DataParallelLayout; None: single process without torch.distributed

    @property
    def is_main(self) -> bool:
        return not _distributed() or torch.distributed.get_rank() == 0

    @property
    def dp_rank(self) -> int:
        return self.layout.rank if self.layout is not None else 0

    @property
    def dp_size(self) -> int:
        return self.layout.size if self.layout is not None else 1

    @property
    def sp_size(self) -> int:
        return self.layout.sp.sp_size if self.layout is not None else 1


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def check_model_dir(path) -> str:
    if path is None:
        from longvila.model.tiny import tiny_model_path

        return str(tiny_model_path())
    if not (Path(path) / "config.json").is_file():
        raise EvalError(f"--model {path} is not a checkpoint folder (no config.json)")
    return str(path)


def load_runtime(model_path: str | None, seq_parallel_size: int = 1, seq_parallel_ring_size: int = 1,
                 seq_parallel_ring_type: str = "zigzag_ring", attn_backend: str = "auto",
                 dtype: str | None = None) -> EvalRuntime:
    """Initialise torch.distributed (one process or torchrun), load the checkpoint, install SP.

    ``model_path=None`` is the embedded tiny default. ``dtype`` defaults to bfloat16 on CUDA, float32 on CPU.
    """
    from longvila.distributed.integration import install_parallelism
    from longvila.distributed.mesh import SequenceParallelConfig
    from longvila.engine.dist import init_distributed
    from longvila.kernels import resolve_attn_backend
    from longvila.model.checkpoint import load_vila

    if dtype is not None and dtype not in DTYPES:
        raise EvalError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    try:
        sp = SequenceParallelConfig(seq_parallel_size, seq_parallel_ring_size, seq_parallel_ring_type)
    except ValueError as error:
        raise EvalError(str(error)) from error
    if not _distributed() and "RANK" not in os.environ and sp.enabled:
        raise EvalError(f"--seq_parallel_size {sp.sp_size} needs {sp.sp_size} ranks: launch with "
                        f"torchrun --nproc_per_node {sp.sp_size} -m longvila.eval.<task> ...")
    if _distributed() or "RANK" in os.environ:
        world = torch.distributed.get_world_size() if _distributed() else int(os.environ.get("WORLD_SIZE", 1))
        if world % sp.sp_size:
            raise EvalError(f"world size {world} is not divisible by --seq_parallel_size {sp.sp_size}")
    path = check_model_dir(model_path) if model_path is not None else None
    env = init_distributed()
    if path is None:  # build the tiny default once, on rank 0
        if env.is_main:
            path = check_model_dir(None)
        torch.distributed.barrier()
        path = check_model_dir(None)
    torch_dtype = DTYPES[dtype] if dtype else (torch.bfloat16 if env.device.type == "cuda" else torch.float32)
    try:
        backend = resolve_attn_backend(attn_backend, env.device)
    except ValueError as error:
        raise EvalError(str(error)) from error
    model, tokenizer, image_processor = load_vila(path, dtype=torch_dtype)
    model.to(env.device).eval()
    try:
        layout = install_parallelism(model, sp, backend)
    except ValueError as error:
        raise EvalError(str(error)) from error
    return EvalRuntime(model, tokenizer, image_processor, path, env.device, torch_dtype, layout)


# ------------------------------------------------------------------------------------------------ grid run
@dataclass(frozen=True)
class GridSpec:
    task: str  # "vniah" | "passkey"
    x_name: str  # key of the x value in every cell ("frames" | "context_tokens")
    x_label: str  # heatmap axis label
    xs: tuple
    depths: tuple


def run_grid(spec: GridSpec, evaluate: Callable[[int, float], list[dict]], runtime: EvalRuntime | None = None,
             disable_tqdm: bool = False) -> list[dict]:
    """Evaluate every (x, depth) cell: ``evaluate(x, depth)`` returns one dict per sample (needle) of the cell,
    each with a boolean ``correct``. Data-parallel groups take every dp_size-th cell; all ranks get all cells."""
    from tqdm.auto import tqdm

    dp_rank, dp_size = (runtime.dp_rank, runtime.dp_size) if runtime is not None else (0, 1)
    points = [(x, depth) for x in spec.xs for depth in spec.depths]
    mine = points[dp_rank::dp_size]
    main = runtime is None or runtime.is_main
    cells = []
    with tqdm(total=len(mine), desc=spec.task, unit="cell", disable=disable_tqdm or not main,
              dynamic_ncols=True) as bar:
        for x, depth in mine:
            samples = evaluate(x, depth)
            if not samples:
                raise RuntimeError(f"{spec.task}: cell ({x}, {depth}) produced no samples")
            accuracy = sum(bool(s["correct"]) for s in samples) / len(samples)
            cells.append({spec.x_name: x, "depth": depth, "accuracy": accuracy, "samples": samples})
            bar.update(1)
            bar.set_postfix(acc=f"{sum(c['accuracy'] for c in cells) / len(cells):.2f}")
    if dp_size > 1:
        gathered: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, cells)
        merged = {}
        for rank_cells in gathered:  # the SP ranks of a group return identical cells; keep one per point
            for cell in rank_cells:
                merged.setdefault((cell[spec.x_name], cell["depth"]), cell)
        cells = [merged[p] for p in points]
    return cells


def summarize(spec: GridSpec, cells: list[dict], config: dict) -> dict:
    """The results document: config, axes, the depth x X accuracy matrix, the mean, and every cell."""
    by_point = {(c[spec.x_name], c["depth"]): c for c in cells}
    matrix = [[by_point[(x, d)]["accuracy"] for x in spec.xs] for d in spec.depths]
    samples = [s for c in cells for s in c["samples"]]
    mean = sum(bool(s["correct"]) for s in samples) / len(samples) if samples else float("nan")
    return {
        "task": spec.task,
        "mean_accuracy": mean,
        "num_cells": len(cells),
        "num_samples": len(samples),
        "axes": {"x_name": spec.x_name, "x_label": spec.x_label, "x": list(spec.xs), "depth": list(spec.depths)},
        "accuracy": matrix,  # rows: depths, columns: x values
        "config": config,
        "cells": cells,
    }


def write_results(results: dict, output_dir, title: str | None = None) -> tuple[Path, Path]:
    """Write ``<task>_results.json`` and ``<task>_heatmap.png`` into ``output_dir``; return both paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    task = results["task"]
    json_path, png_path = out / f"{task}_results.json", out / f"{task}_heatmap.png"
    tmp = json_path.with_name(f".{json_path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, json_path)
    plot_heatmap(results, png_path, title=title)
    return json_path, png_path


def plot_heatmap(results: dict, path, title: str | None = None) -> Path:
    """Depth (rows, 0% at the top) x haystack size (columns) heatmap, red (0) -> green (1), cells annotated."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import LinearSegmentedColormap

    axes = results["axes"]
    xs, depths = axes["x"], axes["depth"]
    data = torch.tensor(results["accuracy"], dtype=torch.float64).numpy()
    # The red -> yellow -> green ramp of LongVA / LongVILA's needle plots, kept light enough for black text.
    cmap = LinearSegmentedColormap.from_list("niah", ["#F0496E", "#EBB839", "#0CD79F"])
    width = min(24.0, max(5.0, 0.55 * len(xs) + 2.5))
    height = min(16.0, max(3.0, 0.4 * len(depths) + 1.8))
    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    image = ax.imshow(data, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(xs)), [str(x) for x in xs], rotation=45 if len(xs) > 12 else 0)
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_xlabel(axes["x_label"])
    ax.set_ylabel("Needle depth (%)")
    if len(xs) * len(depths) <= 600:
        size = 8 if len(xs) <= 16 else 6
        for i in range(len(depths)):
            for j in range(len(xs)):
                ax.text(j, i, f"{100 * data[i, j]:.0f}", ha="center", va="center", fontsize=size, color="black")
    ax.set_xticks([x - 0.5 for x in range(1, len(xs))], minor=True)
    ax.set_yticks([y - 0.5 for y in range(1, len(depths))], minor=True)
    ax.grid(which="minor", color="white", linewidth=0.8)
    ax.tick_params(which="minor", length=0)
    bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    bar.set_label("accuracy")
    head = title or f"{results['task']} — {results['config'].get('model', '')}"
    ax.set_title(f"{head}\nmean accuracy {100 * results['mean_accuracy']:.1f}% "
                 f"({results['num_samples']} samples)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


# ------------------------------------------------------------------------------------------------ CLI
class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors raise :class:`EvalError` (one line, exit code 2 in :func:`cli_main`)."""

    def error(self, message: str):
        raise EvalError(message)


@dataclass(kw_only=True)
class EvalConfig:
    """What every evaluation takes (the flags of :func:`common_parser`); each task's config adds its grid."""

    output_dir: Path
    model: str | None = None
    depth_step: float = 10.0
    seq_parallel_size: int = 1
    seq_parallel_ring_size: int = 1
    seq_parallel_ring_type: str = "zigzag_ring"
    attn_backend: str = "auto"
    dtype: str | None = None
    seed: int = 0
    title: str | None = None
    disable_tqdm: bool = False
    scoring: str = "teacher_forced"
    max_new_tokens: int = 16


def check_scoring(cfg: EvalConfig) -> None:
    if cfg.scoring not in SCORING_MODES:
        raise EvalError(f"--scoring must be one of {', '.join(SCORING_MODES)}, got {cfg.scoring!r}")
    if cfg.max_new_tokens < 1:
        raise EvalError(f"--max_new_tokens must be >= 1, got {cfg.max_new_tokens}")


def common_parser(prog: str, description: str) -> OneLineParser:
    """Flags every evaluation takes: model, output, depth grid, parallelism, dtype."""
    parser = OneLineParser(prog=prog, description=description, allow_abbrev=False)
    parser.add_argument("--model", default=None,
                        help="VILA-layout checkpoint folder (any stage's output). Default: the embedded tiny model.")
    parser.add_argument("--output_dir", required=True, type=Path, help="Where the JSON and the heatmap go.")
    parser.add_argument("--depth_step", type=float, default=10.0, help="Depth grid step in percent (0..100).")
    parser.add_argument("--seq_parallel_size", type=int, default=1, help="SP degree (launch with torchrun).")
    parser.add_argument("--seq_parallel_ring_size", type=int, default=1, help="Ring degree; ulysses = SP / ring.")
    parser.add_argument("--seq_parallel_ring_type", default="zigzag_ring", help="zigzag_ring | ring")
    parser.add_argument("--attn_backend", default="auto", help="auto | triton | flash_attn | torch")
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                        help="Model dtype. Default: bfloat16 on CUDA, float32 on CPU.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--title", default=None, help="Heatmap title (default: task and model).")
    parser.add_argument("--disable_tqdm", action="store_true")
    parser.add_argument("--scoring", default="teacher_forced", choices=SCORING_MODES,
                        help="teacher_forced (one forward, argmax == answer) | generate (greedy, answer in output).")
    parser.add_argument("--max_new_tokens", type=int, default=16, help="Generation length cap (--scoring generate).")
    return parser


def runtime_from_args(args) -> EvalRuntime:
    return load_runtime(args.model, args.seq_parallel_size, args.seq_parallel_ring_size,
                        args.seq_parallel_ring_type, args.attn_backend, args.dtype)


def base_config(args, runtime: EvalRuntime) -> dict:
    return {
        "model": runtime.model_path,
        "dtype": str(runtime.dtype).replace("torch.", ""),
        "device": str(runtime.device),
        "seq_parallel_size": runtime.sp_size,
        "seq_parallel_ring_size": args.seq_parallel_ring_size,
        "seq_parallel_ring_type": args.seq_parallel_ring_type,
        "data_parallel_size": runtime.dp_size,
        "depth_step": args.depth_step,
        "seed": args.seed,
        "scoring": args.scoring,
        "scoring_rule": SCORING_RULES[args.scoring],
        **({"max_new_tokens": args.max_new_tokens,
            "decoding": "kv_cache" if uses_kv_cache(runtime.layout) else "full_forward_per_token"}
           if args.scoring == "generate" else {}),
    }


def publish(spec: GridSpec, cells: list[dict], config: dict, cfg: EvalConfig, runtime: EvalRuntime,
            label: str) -> dict:
    """Summarise the cells; rank 0 writes the JSON and the heatmap and logs the mean accuracy."""
    results = summarize(spec, cells, config)
    if runtime.is_main:
        json_path, png_path = write_results(results, cfg.output_dir, cfg.title)
        logger.info("%s mean accuracy %.1f%% over %d samples; wrote %s and %s", label,
                    100 * results["mean_accuracy"], results["num_samples"], json_path, png_path)
    return results


def cli_main(prog: str, run: Callable[[Sequence[str]], Any], argv: Sequence[str] | None = None) -> None:
    """Run ``run(argv)``; bad requests become ``<prog>: error: ...`` on one line and exit code 2."""
    from longvila.data.errors import MediaError

    rank = os.environ.get("RANK", "0")  # torchrun: only rank 0 reports progress
    logging.basicConfig(level=logging.INFO if rank == "0" else logging.WARNING,
                        format=f"[%(asctime)s rank{rank}] %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    started = time.perf_counter()
    try:
        run(list(sys.argv[1:] if argv is None else argv))
    except EvalError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except MediaError as error:
        print(f"{prog}: media error: {error}", file=sys.stderr)
        sys.exit(1)
    logger.info("%s finished in %.1f s", prog, time.perf_counter() - started)
