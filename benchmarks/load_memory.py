"""Host memory of loading a real-shape checkpoint on 2 ranks: the old path against the new one.

    python benchmarks/load_memory.py --output_dir runs/load_memory

Writes a VILA-layout checkpoint with Qwen2-1.5B's layer shapes and vocabulary (2 decoder layers) and SigLIP-so400m's
(2 encoder layers), stored in bf16 as releases are, then launches ``torchrun --nproc_per_node 2`` once per mode in a
fresh process group and records each rank's resident-set peak (``ru_maxrss``) after the load and after
``deepspeed.initialize``:

* ``fp32_then_cast``: what every stage did before (load in fp32 on every rank, cast to the training dtype later);
* ``direct``: load once in the training dtype (bf16);
* ``zero3_direct``: ZeRO-3, loaded like ``direct`` and partitioned by ``deepspeed.initialize``;
* ``zero3_partitioned``: ZeRO-3, weights partitioned while they load (``longvila.engine.zero3_loading``).

The ratios against ``fp32_then_cast`` are measured in the same run; results go to ``<out>/load_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

MODES = ("fp32_then_cast", "direct", "zero3_direct", "zero3_partitioned")


def pss_gb() -> float:
    """Proportional set size now: shared pages (the mmap-ed checkpoint) split between the ranks that map them,
    so the ranks' sum is what the node really holds. Linux only; NaN elsewhere."""
    try:
        text = Path("/proc/self/smaps_rollup").read_text()
    except OSError:
        return float("nan")
    return next(int(line.split()[1]) for line in text.splitlines() if line.startswith("Pss:")) / 2**20


def measure(mode: str, checkpoint: str) -> dict:
    """One rank's measurement (run under torchrun)."""
    import deepspeed
    import torch

    from longvila.engine.dist import init_distributed
    from longvila.engine.metrics import host_peak_memory_gb
    from longvila.engine.zero3_loading import partitioned_loading
    from longvila.model.checkpoint import load_vila

    env = init_distributed()
    base = host_peak_memory_gb()
    ds_config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                 "train_batch_size": env.world_size, "bf16": {"enabled": True}, "zero_allow_untested_optimizer": True,
                 "zero_optimization": {"stage": 3 if mode.startswith("zero3") else 2}}
    with partitioned_loading(ds_config if mode == "zero3_partitioned" else {}):
        model, _, _ = load_vila(checkpoint, dtype=torch.float32 if mode == "fp32_then_cast" else torch.bfloat16)
    model.to(torch.bfloat16)
    after_load, pss_load = host_peak_memory_gb(), pss_gb()
    model.set_trainable(vision_tower=False, mm_projector=True, llm=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config, dist_init_required=False)
    return {"mode": mode, "rank": env.rank, "baseline_gb": base, "after_load_gb": after_load,
            "after_initialize_gb": host_peak_memory_gb(), "pss_after_load_gb": pss_load,
            "pss_after_initialize_gb": pss_gb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--measure", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        row = measure(args.measure, args.checkpoint)
        (args.output_dir / f"{args.measure}.rank{row['rank']}.json").write_text(json.dumps(row))
        return

    from longvila.model.real_shapes import build_real_shape_checkpoint

    args.output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = args.output_dir / "qwen2-1.5b-2L_siglip-so400m-2L"
    if not (checkpoint / "config.json").is_file():
        build_real_shape_checkpoint(checkpoint)
    rows = []
    for mode in MODES:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   __file__, "--output_dir", str(args.output_dir), "--measure", mode, "--checkpoint", str(checkpoint)]
        subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        rows += [json.loads((args.output_dir / f"{mode}.rank{r}.json").read_text()) for r in range(2)]
    base = {r["rank"]: r for r in rows if r["mode"] == MODES[0]}
    for row in rows:
        for key in ("after_load_gb", "after_initialize_gb"):
            row[key.replace("_gb", "_ratio")] = row[key] / base[row["rank"]][key]
    (args.output_dir / "load_memory.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"{'mode':<20}{'rank':>5}{'baseline':>9}{'peak@load':>10}{'ratio':>6}{'peak@init':>10}{'ratio':>6}"
          f"{'PSS@load':>9}{'PSS@init':>9}   (GB)")
    for r in rows:
        print(f"{r['mode']:<20}{r['rank']:>5}{r['baseline_gb']:>9.2f}{r['after_load_gb']:>10.2f}"
              f"{r['after_load_ratio']:>6.2f}{r['after_initialize_gb']:>10.2f}{r['after_initialize_ratio']:>6.2f}"
              f"{r['pss_after_load_gb']:>9.2f}{r['pss_after_initialize_gb']:>9.2f}")


if __name__ == "__main__":
    main()
