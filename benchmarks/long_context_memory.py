"""Peak memory and speed of a stage-4 step at real model shapes, at doubling lengths: old path, default, ALST.

    python benchmarks/long_context_memory.py --output_dir runs/long_context_memory            # one process
    python benchmarks/long_context_memory.py --output_dir runs/long_context_memory --sp 2     # with ALST beside us
    python benchmarks/long_context_memory.py --output_dir runs/long_context_memory --llm qwen2-7b --llm_layers 1 --lora
    python benchmarks/long_context_memory.py --output_dir runs/long_context_memory --sp 2 --ring 2 --systems default

Builds (once) a VILA-layout checkpoint with a released LLM's layer shapes and real vocabulary but few decoder layers
(``longvila.model.real_shapes``; Qwen2-1.5B with 2 layers by default). Each (system, length) point is a fresh run of two optimizer steps
(two, because AdamW allocates its state in the first: only the second step's peak holds weights, gradients,
optimizer state and activations at once), fp32 on CPU with gradient checkpointing, at 2K, 4K, 8K, ... until a run
would exceed ``--budget_gb`` per rank (predicted from the previous two lengths, so the machine is never driven out
of memory), fails, or passes ``--max_seconds``. A point is the resident-set peak over both steps (``peak_gb``) and
over the second step alone (``step_peak_gb``, apart from loading and set-up), each the max over ranks, and the second
step's tokens/s (global tokens / step seconds); growth is GB per 1K tokens between lengths.

Systems: ``naive`` (full-logits loss, untiled MLP: the old default), ``chunked`` (chunked loss only), ``default``
(chunked loss + tiled MLP). With ``--sp N`` ours run Ulysses SP over N gloo ranks (``torchrun``), and DeepSpeed ALST
runs on the same checkpoint's LLM, tokens and DeepSpeed config (``benchmarks/alst_step.py``): ``alst`` (TiledMLP +
TiledFusedLogitsLoss) and ``alst_untiled`` (Ulysses only). ``--ring R`` makes R of the SP ranks a zigzag ring
(2D when SP > R) and ``--deepspeed zero3`` partitions the weights too; ALST runs neither. Threads are split evenly
between the ranks. Writes ``<out>/long_context_memory[_spN][_ringR][_<llm>-<layers>L][_lora][_zero3].json`` (the
suffixes only where they differ from one process, Qwen2-1.5B, 2 layers, full fine-tune, ZeRO-2) and a ``.png``
beside it of memory against tokens, one line per system. Every row records the settings the planner predicts it
from (``longvila.plan.measured.benchmark_configuration``), the command line and the commit.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rank_runs import launcher, provenance, run_measured_steps, save_line_plot

from longvila.plan.measured import BENCHMARK_SYSTEMS, probe_step_flags, system_flags

# naive: the path every stage took before; chunked: chunked loss only; default: chunked loss + tiled MLP (4096-token
# tiles). The planner predicts the same systems (longvila.plan.measured.BENCHMARK_SYSTEMS).
OURS = {name: system_flags(name) for name in BENCHMARK_SYSTEMS}
ALST = {"alst": [], "alst_untiled": ["--untiled"]}  # DeepSpeed's peer, only under SP (benchmarks/alst_step.py)
SYSTEMS = {**OURS, **ALST}
ALST_SCRIPT = Path(__file__).resolve().with_name("alst_step.py")


def point_command(checkpoint: Path, out: Path, system: str, length: int, sp: int, extra: list[str],
                  ring: int = 1) -> tuple[list[str], Path]:
    """The command for one (system, length) point and the JSON-lines file its steps land in."""
    data_dir = out.parent.parent / "data"
    if system in ALST:
        return ([*launcher(sp), str(ALST_SCRIPT), "--checkpoint", str(checkpoint), "--data_dir", str(data_dir),
                 "--length", str(length), "--out", str(out), *ALST[system]], out / "alst_metrics.jsonl")
    module = ["-m", "longvila.stages.s4_context_ext"]
    parallel = ["--seq_parallel_size", str(sp), "--seq_parallel_ring_size", str(ring)] if sp > 1 else []
    return ([*launcher(sp), *module, *probe_step_flags(checkpoint, out, data_dir, length), *parallel, *OURS[system],
             *extra], out / "metrics.jsonl")


def run_point(checkpoint: Path, out: Path, system: str, length: int, sp: int, extra: list[str],
              timeout: float, ring: int = 1) -> dict | None:
    command, metrics = point_command(checkpoint, out, system, length, sp, extra, ring)
    measured = run_measured_steps(command, metrics, out, sp, timeout)
    if measured is None:
        return None
    return {"system": system, "tokens": length, "tokens_per_sec": length / measured["step_seconds"], **measured}


def plot(rows: list[dict], path: Path, title: str) -> None:
    series = {system: [(r["tokens"], r["peak_gb"]) for r in rows if r["system"] == system] for system in SYSTEMS}
    save_line_plot(series, path, "tokens per step", "peak resident memory per rank (GB)", title)


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--llm", default="qwen2-1.5b", help="layer shapes (longvila.model.real_shapes.LLM_SHAPES)")
    parser.add_argument("--llm_layers", type=int, default=2)
    parser.add_argument("--lora", action="store_true", help="LoRA on the LLM, for shapes whose full fine-tune "
                        "does not fit the host (Qwen2-7B's untied embedding and head alone are 1.1 B parameters: "
                        "17 GB of fp32 weights, gradients and AdamW state)")
    parser.add_argument("--sp", type=int, default=1, help="sequence-parallel ranks; ALST joins from 2")
    parser.add_argument("--ring", type=int, default=1, help="of the SP ranks, the zigzag ring's degree (the rest "
                        "Ulysses); default 1: Ulysses only, as ALST")
    parser.add_argument("--deepspeed", default="zero2", choices=("zero2", "zero3"))
    parser.add_argument("--systems", default=None, help="comma list; default: naive,chunked,default at SP=1, "
                        "naive,default,alst_untiled,alst under SP")
    parser.add_argument("--start", type=int, default=2048)
    parser.add_argument("--max_length", type=int, default=32768)
    parser.add_argument("--budget_gb", type=float, default=20.0, help="per rank (all ranks share one host here); a "
                        "length predicted (linearly from the last two) to exceed it is not run")
    parser.add_argument("--max_seconds", type=float, default=1800.0, help="per run")
    args = parser.parse_args(argv)
    systems = (args.systems or ("naive,chunked,default" if args.sp == 1 else "naive,default,alst_untiled,alst"))
    systems = systems.split(",")
    unknown = [name for name in systems if name not in SYSTEMS]
    if unknown:
        parser.error(f"--systems: unknown {unknown}; known: {', '.join(SYSTEMS)}")
    if args.sp == 1 and any(name in ALST for name in systems):
        parser.error("--systems: ALST runs only with --sp 2 or more")
    if args.lora and any(name in ALST for name in systems):
        parser.error("--lora: the ALST runner trains the full model; pass --systems without alst")
    if (args.ring > 1 or args.deepspeed != "zero2") and any(name in ALST for name in systems):
        parser.error("--ring / --deepspeed zero3: the ALST runner is Ulysses with ZeRO-2; pass --systems without alst")
    if args.ring < 1 or args.sp % args.ring:
        parser.error(f"--ring {args.ring} must divide --sp {args.sp}")
    return args, systems


def main() -> None:
    args, systems = parse_args()
    from longvila.model.real_shapes import build_real_shape_checkpoint

    args.output_dir.mkdir(parents=True, exist_ok=True)
    probe = f"{args.llm}-{args.llm_layers}L"
    checkpoint = args.output_dir / probe
    if not (checkpoint / "config.json").is_file():
        build_real_shape_checkpoint(checkpoint, llm=args.llm, llm_layers=args.llm_layers)
    extra = (["--lora_llm", "true"] if args.lora else []) + ["--deepspeed", args.deepspeed]
    tag = "".join([f"_sp{args.sp}" if args.sp > 1 else "", f"_ring{args.ring}" if args.ring > 1 else "",
                   f"_{probe}" if probe != "qwen2-1.5b-2L" else "", "_lora" if args.lora else "",
                   f"_{args.deepspeed}" if args.deepspeed != "zero2" else ""])
    results = args.output_dir / f"long_context_memory{tag}.json"
    # Earlier rows are kept unless this run measures the same (system, length) again, so a comparison can be built
    # up over several runs; a system's earlier, shorter points seed its growth and budget prediction.
    rows = json.loads(results.read_text()) if results.is_file() else []
    done = {system: sorted((r["tokens"], r["peak_gb"]) for r in rows if r["system"] == system
                           and r["tokens"] < args.start) for system in systems}
    stopped: set[str] = set()
    length = args.start
    while length <= args.max_length and len(stopped) < len(systems):
        for system in systems:  # lengths outside, systems inside: an interrupted run still compares like with like
            if system in stopped:
                continue
            if len(done[system]) >= 2:
                (l1, m1), (l2, m2) = done[system][-2:]
                predicted = m2 + (m2 - m1) / (l2 - l1) * (length - l2)
                if predicted > args.budget_gb:
                    print(f"{system}: {length} tokens predicted at {predicted:.1f} GB/rank > budget; stopping")
                    stopped.add(system)
                    continue
            out = args.output_dir / "runs" / f"{system}{tag}-{length}"
            row = run_point(checkpoint, out, system, length, args.sp, extra, args.max_seconds, args.ring)
            if row is None:
                print(f"{system}: {length} tokens failed or timed out; stopping")
                stopped.add(system)
                continue
            row.update(llm=args.llm, llm_layers=args.llm_layers, lora=args.lora, ring=args.ring,
                       deepspeed=args.deepspeed, **provenance())
            if done[system]:
                last_length, last_peak = done[system][-1]
                row["gb_per_1k_tokens"] = (row["peak_gb"] - last_peak) / ((length - last_length) / 1000)
            done[system].append((length, row["peak_gb"]))
            rows = [r for r in rows if (r["system"], r["tokens"]) != (system, length)] + [row]
            print(json.dumps(row), flush=True)
            results.write_text(json.dumps(rows, indent=2) + "\n")
        length *= 2
    results.write_text(json.dumps(rows, indent=2) + "\n")
    kind = "Ulysses" if args.ring == 1 else ("zigzag ring" if args.ring == args.sp else f"ring {args.ring} x Ulysses")
    ranks = "one process" if args.sp == 1 else f"SP={args.sp} ({kind}) on {args.sp} gloo ranks"
    title = f"Stage 4, {args.llm} shapes ({args.llm_layers} layers{', LoRA' if args.lora else ''}), fp32 CPU, {ranks}"
    plot(rows, results.with_suffix(".png"), title)


if __name__ == "__main__":
    main()
