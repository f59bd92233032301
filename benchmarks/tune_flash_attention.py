"""Sweep launch configs of the Triton flash-attention kernels on a CUDA device, beside SDPA's backends.

Why: the autotune candidates in ``longvila.kernels.flash_attention`` were first picked by compiling for sm_90 on a
machine without a GPU (no spills, fits shared memory). This script times a wider grid on the real device, one
kernel at a time (the others at their defaults), so the candidate lists can be chosen from measurements.

    python benchmarks/tune_flash_attention.py --seq 16384 --heads 16 --head-dim 128 --budget 420 --json out.json

Prints one table per kernel, fastest first, and SDPA's backends as the baseline. Stops starting new configs once
``--budget`` seconds have passed, so it fits a device lease.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time

import torch
import torch.nn.functional as F


def _grid(blocks, warps, stages):
    return [(m, n, w, s) for (m, n), w, s in itertools.product(blocks, warps, stages)]


FWD = _grid([(64, 64), (64, 128), (128, 64), (128, 128)], [4, 8], [2, 3, 4])
DKDV = _grid([(16, 128), (32, 64), (32, 128), (64, 64), (64, 128), (128, 64)], [4, 8], [2, 3])
DQ = _grid([(64, 32), (64, 64), (128, 32), (128, 64), (128, 128)], [4, 8], [2, 3])


def _config(c):
    m, n, w, s = c
    return {"BLOCK_M": m, "BLOCK_N": n, "num_warps": w, "num_stages": s}


def main() -> None:
    from triton.testing import do_bench

    from longvila.kernels import flash_attention as fa

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq", type=int, default=16384)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=None)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--budget", type=float, default=420.0, help="seconds; no new config starts after this")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")

    start = time.perf_counter()
    hk = args.kv_heads or args.heads
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, args.heads, args.seq, args.head_dim, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, hk, args.seq, args.head_dim, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn_like(k)
    dout = torch.randn_like(q)
    scale = 1.0 / math.sqrt(args.head_dim)
    fwd_flops = 4 * args.heads * args.seq**2 * args.head_dim * 0.5
    out, lse = fa._forward(q, k, v, True, scale, config=_config(fa._FWD_CONFIGS[0]))
    ref = F.scaled_dot_product_attention(q.float(), k.float().repeat_interleave(args.heads // hk, 1),
                                         v.float().repeat_interleave(args.heads // hk, 1), is_causal=True)
    rel = ((out.float() - ref).norm() / ref.norm()).item()
    print(f"default forward vs fp32 SDPA: rel err {rel:.2e}")
    results = {"shape": [1, args.heads, hk, args.seq, args.head_dim], "device": torch.cuda.get_device_name()}

    def bench(fn):
        return do_bench(fn, warmup=50, rep=200, return_mode="median")

    def sweep(name, configs, run, flops):
        rows = []
        for c in configs:
            if time.perf_counter() - start > args.budget:
                print(f"[{name}] budget reached, {len(configs) - len(rows)} configs not tried")
                break
            try:
                ms = bench(lambda c=c: run(c))
            except Exception as e:  # out of shared memory / resources for this config
                rows.append({"config": c, "error": type(e).__name__})
                continue
            rows.append({"config": c, "ms": ms, "tflops": flops / ms / 1e9})
        ok = sorted((r for r in rows if "ms" in r), key=lambda r: r["ms"])
        print(f"\n{name}: {len(ok)} ran, {len(rows) - len(ok)} failed")
        for r in ok[:6]:
            print(f"  {r['config']}  {r['ms']:.3f} ms  {r['tflops']:.0f} TFLOPS")
        results[name] = rows
        return ok[0]["config"] if ok else None

    sdpa = {}
    from torch.nn.attention import SDPBackend, sdpa_kernel
    kr, vr = k.repeat_interleave(args.heads // hk, 1), v.repeat_interleave(args.heads // hk, 1)
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        qg, kg, vg = (t.detach().clone().requires_grad_() for t in (q, kr, vr))
        try:
            with sdpa_kernel(backend):
                f = bench(lambda: F.scaled_dot_product_attention(qg, kg, vg, is_causal=True))
                o = F.scaled_dot_product_attention(qg, kg, vg, is_causal=True)
                fb = bench(lambda: torch.autograd.grad(o, (qg, kg, vg), dout, retain_graph=True))
        except RuntimeError:
            continue
        sdpa[backend.name] = {"fwd_ms": f, "bwd_ms": fb}
        print(f"SDPA {backend.name}: fwd {f:.3f} ms ({fwd_flops / f / 1e9:.0f} TFLOPS), "
              f"bwd {fb:.3f} ms ({2.5 * fwd_flops / fb / 1e9:.0f} TFLOPS)")
    results["sdpa"] = sdpa

    best_fwd = sweep("fwd", FWD, lambda c: fa._forward(q, k, v, True, scale, config=_config(c)), fwd_flops)
    dq_default = _config(fa._DQ_CONFIGS[0])
    dkdv_default = _config(fa._DKDV_CONFIGS[0])
    best_dkdv = sweep("bwd-dkdv (dq at default)", DKDV,
                      lambda c: fa._backward(dout, q, k, v, out, lse, True, scale, dkdv_config=_config(c),
                                             dq_config=dq_default), 2.5 * fwd_flops)
    dkdv_best_cfg = _config(best_dkdv) if best_dkdv else dkdv_default
    best_dq = sweep("bwd-dq (dkdv at best)", DQ,
                    lambda c: fa._backward(dout, q, k, v, out, lse, True, scale, dkdv_config=dkdv_best_cfg,
                                           dq_config=_config(c)), 2.5 * fwd_flops)
    results["best"] = {"fwd": best_fwd, "dkdv": best_dkdv, "dq": best_dq}
    print(f"\nbest: fwd {best_fwd}  dkdv {best_dkdv}  dq {best_dq}  ({time.perf_counter() - start:.0f} s)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
