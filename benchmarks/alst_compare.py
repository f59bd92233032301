"""Our stage 4 against DeepSpeed's ALST on equal work: rows of one document, repeated runs, systems interleaved.

    python benchmarks/alst_compare.py --output_dir runs/alst --lengths 4096,8192 --repeats 3
    python benchmarks/alst_compare.py --output_dir runs/alst --reach --budget_gb 9 --start 4096

Why rows of one document: ALST's Ulysses wrapper over ``sdpa`` drops the attention mask and attends causally
over the whole row, where our attention stops at document boundaries. On packed rows the two systems therefore
do different attention work. Here every row is one document of exactly ``length`` tokens (text trimmed until it
tokenises to ``length - 1`` tokens, plus the end-of-document token), checked before anything runs, so both
systems run the same mask-free causal SDPA over the same tokens.

Systems, all Ulysses over ``--sp`` gloo ranks on the same checkpoint, tokens, DeepSpeed config and optimizer:
- ``ours``: ``python -m longvila.stages.s4_context_ext`` with its defaults (chunked loss, tiled MLP).
- ``alst``: ``benchmarks/alst_step.py`` with ALST's defaults (TiledMLP, ~1 GiB fp32 logit shards).
- ``alst_matched``: ALST with its logit shards cut to our loss chunk's rows (``default_chunk_size``), so both
  systems hold the same loss shard memory.

Speed mode (``--lengths``): every length runs ``--repeats`` rounds; each round runs every system once, the order
rotated from round to round (A B C, B C A, C A B), so drift on a shared host falls on all systems alike. Each row
is the second optimizer step of a fresh run (AdamW allocates its state in the first): step seconds and the
resident-set peak, max over ranks. The summary gives the median and range per (system, length).

Reach mode (``--reach``): the per-rank budget is an argument, fixed before the run. Each system's length doubles
from ``--start`` until its measured peak exceeds the budget, or the run fails; its reach is the last length that
fit. Lengths are interleaved across systems as in speed mode.

Profile mode (``--profile``): one run per system at the first length, its second step under the profiler
(``benchmarks/profile_second_step.py``); ``<out>/alst_compare_profile.md`` lists rank 0's heaviest operators.

Writes ``<out>/alst_compare.json`` (every run), ``<out>/alst_compare.md`` (the summary table) and a ``.png`` of
step time and peak memory against length.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from rank_runs import launcher, run_measured_steps

from longvila.plan.measured import probe_step_flags

ALST_SCRIPT = Path(__file__).resolve().with_name("alst_step.py")
PROFILER = Path(__file__).resolve().with_name("profile_second_step.py")
SYSTEMS = ("ours", "alst", "alst_matched")


def trimmed_document(tokenizer, text: str, tokens: int) -> str:
    """The longest prefix of ``text`` that tokenises to exactly ``tokens`` tokens (binary search on characters)."""
    def count(chars: int) -> int:
        return len(tokenizer(text[:chars], add_special_tokens=False)["input_ids"])

    if count(len(text)) < tokens:
        raise ValueError(f"text of {len(text)} characters has fewer than {tokens} tokens")
    low, high = 0, len(text)  # count(low) < tokens <= count(high)
    while high - low > 1:
        middle = (low + high) // 2
        if count(middle) < tokens:
            low = middle
        else:
            high = middle
    if count(high) != tokens:
        raise ValueError(f"no prefix tokenises to exactly {tokens} tokens (a merge jumps past it)")
    return text[:high]


def write_single_document_rows(tokenizer, path: Path, length: int, rows: int, seed: int = 0) -> Path:
    """A long-text JSONL of ``rows`` passkey documents that each pack into exactly one ``length``-token row."""
    import numpy as np

    from longvila.data.synthetic import passkey_document

    records = []
    for index in range(rows):
        rng = np.random.default_rng([seed, length, index])
        document = passkey_document(rng, doc_tokens_approx=2 * length)
        records.append({"text": trimmed_document(tokenizer, document["text"], length - 1)})  # + end of document
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def check_single_document_rows(tokenizer, path: Path, length: int, rows: int) -> None:
    """Refuse the data unless our packing yields ``rows`` rows, each one whole document with no padding."""
    from longvila.data.packing import PackedTextDataset

    dataset = PackedTextDataset(path, tokenizer, length)
    if len(dataset) != rows:
        raise ValueError(f"{path}: {len(dataset)} packed rows, expected {rows}")
    for index in range(len(dataset)):
        sample = dataset[index]
        starts = int((sample["position_ids"] == 0).sum())
        if starts != 1 or int((sample["labels"] < 0).sum()) != 0:
            raise ValueError(f"{path}: row {index} holds {starts} documents or padding; every row must be one document")


def our_loss_chunk_rows(checkpoint: Path, length: int, sp: int) -> int:
    """Rows per chunk of our default chunked loss on one rank's shard (``default_chunk_size``)."""
    from transformers import AutoConfig

    from longvila.kernels.fused_linear_ce import default_chunk_size

    config = AutoConfig.from_pretrained(checkpoint / "llm")
    return default_chunk_size(length // sp, config.vocab_size, config.hidden_size)


def point_command(system: str, checkpoint: Path, data: Path, out: Path, length: int, sp: int,
                  profile: bool = False) -> tuple[list, Path]:
    """One run's command line and the JSON-lines file its steps land in; ``profile``: its second step runs under
    the profiler (``benchmarks/profile_second_step.py``, profiles in ``<out>/profile``)."""
    start = [*launcher(sp), *([str(PROFILER), "--out", str(out / "profile")] if profile else [])]
    if system == "ours":
        flags = probe_step_flags(checkpoint, out, data.parent, length)
        at = flags.index("--data_dir")
        flags[at:at + 2] = ["--data_path", str(data)]
        return ([*start, "-m", "longvila.stages.s4_context_ext", *flags, "--seq_parallel_size", str(sp),
                 "--seq_parallel_ring_size", "1"], out / "metrics.jsonl")
    extra = (["--loss_shard_rows", str(our_loss_chunk_rows(checkpoint, length, sp))] if system == "alst_matched"
             else [])
    return ([*start, str(ALST_SCRIPT), "--checkpoint", str(checkpoint), "--data_path", str(data),
             "--length", str(length), "--out", str(out), *extra], out / "alst_metrics.jsonl")


def profile_table(out_dirs: dict[str, Path], top: int = 12) -> str:
    """Rank 0's heaviest operators (self CPU seconds in the profiled step), one column per system."""
    profiles = {system: {row["op"]: row["self_cpu_s"] for row in
                         json.loads((out / "profile" / "profile_rank0.json").read_text())}
                for system, out in out_dirs.items() if (out / "profile" / "profile_rank0.json").is_file()}
    ops = sorted({op for rows in profiles.values() for op in rows},
                 key=lambda op: -max(rows.get(op, 0.0) for rows in profiles.values()))[:top]
    lines = ["| operator (self CPU s, rank 0) | " + " | ".join(profiles) + " |",
             "|---|" + "---|" * len(profiles)]
    for op in ops:
        lines.append(f"| `{op}` | " + " | ".join(f"{rows.get(op, 0.0):.2f}" for rows in profiles.values()) + " |")
    lines.append("| all listed | " + " | ".join(f"{sum(rows.values()):.2f}" for rows in profiles.values()) + " |")
    return "\n".join(lines) + "\n"


def run_point(system: str, checkpoint: Path, data: Path, out: Path, length: int, sp: int,
              timeout: float, profile: bool = False) -> dict | None:
    command, metrics = point_command(system, checkpoint, data, out, length, sp, profile)
    measured = run_measured_steps(command, metrics, out, sp, timeout)
    return None if measured is None else {"system": system, "tokens": length, **measured}


def summarise(rows: list[dict]) -> list[dict]:
    """Median and range of step seconds and peak memory per (system, length)."""
    table = []
    for length in sorted({r["tokens"] for r in rows}):
        for system in SYSTEMS:
            runs = [r for r in rows if r["system"] == system and r["tokens"] == length]
            if not runs:
                continue
            seconds = [r["step_seconds"] for r in runs]
            peaks = [r["peak_gb"] for r in runs]
            table.append({"system": system, "tokens": length, "runs": len(runs),
                          "step_seconds": statistics.median(seconds), "seconds_min": min(seconds),
                          "seconds_max": max(seconds), "peak_gb": statistics.median(peaks),
                          "peak_min": min(peaks), "peak_max": max(peaks)})
    return table


def reach_summary(rows: list[dict], budget_gb: float, systems: list[str]) -> str:
    """Per system: every length measured (speed medians and reach runs) against the budget, and its reach."""
    peaks: dict[tuple[str, int], float] = {(t["system"], t["tokens"]): t["peak_gb"]
                                           for t in summarise([r for r in rows if r.get("mode") != "reach"])}
    peaks.update({(r["system"], r["tokens"]): r["peak_gb"] for r in rows if r.get("mode") == "reach"
                  and not r.get("failed")})
    failed = {(r["system"], r["tokens"]) for r in rows if r.get("failed")}
    lines = [f"| system | peak GB/rank by tokens (budget {budget_gb:g} GB/rank, fixed before the runs) | reach |",
             "|---|---|---|"]
    for system in systems:
        mine = sorted((tokens, peak) for (name, tokens), peak in peaks.items() if name == system)
        fits = [tokens for tokens, peak in mine if peak <= budget_gb]
        over = [tokens for tokens, peak in mine if peak > budget_gb] + [t for name, t in failed if name == system]
        reach = (f"{max(fits):,}" if fits else "none") + ("" if over else " (longest run; it still fit)")
        cells = [f"{t // 1024}K: {p:.2f}" for t, p in mine] + [f"{t // 1024}K: failed" for name, t in sorted(failed)
                                                               if name == system]
        lines.append(f"| {system} | " + ", ".join(cells) + f" | {reach} |")
    return "\n".join(lines) + "\n"


def markdown(table: list[dict]) -> str:
    lines = ["| system | tokens | runs | step s, median (range) | tokens/s, median | peak GB/rank, median (range) |",
             "|---|---|---|---|---|---|"]
    for t in table:
        lines.append(f"| {t['system']} | {t['tokens']} | {t['runs']} | {t['step_seconds']:.1f} "
                     f"({t['seconds_min']:.1f}-{t['seconds_max']:.1f}) | {t['tokens'] / t['step_seconds']:.1f} | "
                     f"{t['peak_gb']:.2f} ({t['peak_min']:.2f}-{t['peak_max']:.2f}) |")
    return "\n".join(lines) + "\n"


def plot(table: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for system in SYSTEMS:
        mine = sorted((t for t in table if t["system"] == system), key=lambda t: t["tokens"])
        if not mine:
            continue
        x = [t["tokens"] for t in mine]
        for ax, key, low, high in ((axes[0], "step_seconds", "seconds_min", "seconds_max"),
                                   (axes[1], "peak_gb", "peak_min", "peak_max")):
            y = [t[key] for t in mine]
            ax.errorbar(x, y, yerr=[[t[key] - t[low] for t in mine], [t[high] - t[key] for t in mine]],
                        marker="o", capsize=3, label=system)
    for ax, label in ((axes[0], "second step seconds (median, range)"), (axes[1], "peak resident GB per rank")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens per step (one document per row)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--llm", default="qwen2-0.5b", help="layer shapes (longvila.model.real_shapes.LLM_SHAPES)")
    parser.add_argument("--llm_layers", type=int, default=8)
    parser.add_argument("--sp", type=int, default=2)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--lengths", default="4096,8192", help="speed mode: comma list of tokens per step")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reach", action="store_true", help="double each system's length until over --budget_gb")
    parser.add_argument("--profile", action="store_true", help="one run per system at the first --lengths with its "
                        "second step under the profiler; writes alst_compare_profile.md")
    parser.add_argument("--budget_gb", type=float, default=None, help="reach mode: per-rank peak budget, fixed "
                        "before the run")
    parser.add_argument("--start", type=int, default=4096)
    parser.add_argument("--max_length", type=int, default=131072)
    parser.add_argument("--max_seconds", type=float, default=3600.0, help="per run")
    args = parser.parse_args(argv)
    args.systems = args.systems.split(",")
    unknown = [name for name in args.systems if name not in SYSTEMS]
    if unknown:
        parser.error(f"--systems: unknown {unknown}; known: {', '.join(SYSTEMS)}")
    if args.sp < 2:
        parser.error("--sp must be 2 or more: ALST is sequence parallelism")
    if args.reach and args.budget_gb is None:
        parser.error("--reach needs --budget_gb, chosen before the run")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    try:
        args.lengths = [int(x) for x in args.lengths.split(",")]
    except ValueError:
        parser.error(f"--lengths must be a comma list of integers, got {args.lengths!r}")
    return args


def main() -> None:
    args = parse_args()
    from transformers import AutoTokenizer

    from longvila.model.real_shapes import build_real_shape_checkpoint

    args.output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = args.output_dir / f"{args.llm}-{args.llm_layers}L"
    if not (checkpoint / "config.json").is_file():
        build_real_shape_checkpoint(checkpoint, llm=args.llm, llm_layers=args.llm_layers)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint / "llm")
    results = args.output_dir / "alst_compare.json"
    rows = json.loads(results.read_text()) if results.is_file() else []

    def data_for(length: int) -> Path:
        folder = args.output_dir / f"data-{length}"
        folder.mkdir(exist_ok=True)
        path = folder / "one_document_rows.jsonl"
        if not path.is_file():
            write_single_document_rows(tokenizer, path, length, rows=2 * args.sp)
        check_single_document_rows(tokenizer, path, length, rows=2 * args.sp)
        return path

    def measure(system: str, length: int, label: str) -> dict | None:
        out = args.output_dir / "runs" / f"{system}-{length}-{label}"
        row = run_point(system, checkpoint, data_for(length), out, length, args.sp, args.max_seconds,
                        profile=label == "profile")
        if row is None and args.reach:  # a failed reach run (killed, out of memory) ends that system's reach
            row = {"system": system, "tokens": length, "sp": args.sp, "failed": True}
        if row is not None and label != "profile":  # profiled steps are slower: kept out of the timing rows
            row.update(llm=args.llm, llm_layers=args.llm_layers, run=label, mode="reach" if args.reach else "speed",
                       budget_gb=args.budget_gb if args.reach else None)
            rows.append(row)
            results.write_text(json.dumps(rows, indent=2) + "\n")
            if row.get("failed"):
                return None
        print(json.dumps(row if row is not None else {"system": system, "tokens": length, "failed": True}),
              flush=True)
        return row

    if args.profile:
        length = args.lengths[0]
        for system in args.systems:
            measure(system, length, "profile")
        table = profile_table({system: args.output_dir / "runs" / f"{system}-{length}-profile"
                               for system in args.systems})
        (args.output_dir / "alst_compare_profile.md").write_text(table)
        print(table)
        return
    if args.reach:
        fitting = {system: True for system in args.systems}
        measured = {(t["system"], t["tokens"]): t["peak_gb"] for t in summarise(
            [r for r in rows if r.get("mode", "speed") == "speed" and r["llm"] == args.llm
             and r["llm_layers"] == args.llm_layers])}
        length = args.start
        while length <= args.max_length and any(fitting.values()):
            for system in [s for s in args.systems if fitting[s]]:
                if (system, length) in measured:  # the speed runs' median peak: the same run, not run again
                    peak = measured[(system, length)]
                    print(f"{system}: {length} tokens, median peak {peak:.2f} GB/rank from the speed runs")
                else:
                    row = measure(system, length, "reach")
                    peak = None if row is None else row["peak_gb"]
                if peak is None or peak > args.budget_gb:
                    fitting[system] = False
            length *= 2
        reach_table = reach_summary(rows, args.budget_gb, args.systems)
        (args.output_dir / "alst_compare_reach.md").write_text(reach_table)
        print(reach_table)
    else:
        for length in args.lengths:
            for round_index in range(args.repeats):
                shift = round_index % len(args.systems)
                for system in args.systems[shift:] + args.systems[:shift]:
                    measure(system, length, f"r{round_index}")
    speed = [r for r in rows if r.get("mode", "speed") == "speed"]
    table = summarise(speed)
    (args.output_dir / "alst_compare.md").write_text(markdown(table))
    print(markdown(table))
    title = (f"Stage 4 vs ALST, {args.llm} shapes ({args.llm_layers} layers), fp32 CPU, Ulysses SP={args.sp}, "
             "one document per row")
    if table:
        plot(table, results.with_suffix(".png"), title)


if __name__ == "__main__":
    main()
