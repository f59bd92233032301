"""The peer in ``long_context_memory.py --sp N``: DeepSpeed ALST on the same HF model and tokens as our stage 4.

    torchrun --nproc_per_node 2 benchmarks/alst_step.py --checkpoint CKPT --data_dir DATA --length 8192 --out OUT

What runs is ALST as its authors describe it (DeepSpeed's ``ulysses_sp.py``; Arctic Training's SFT trainer):
``UlyssesSPAttentionHF.register_with_transformers`` over ``sdpa``, ``UlyssesSPDataLoaderAdapter`` for the
contiguous sequence shards and shifted labels, ``TiledMLP`` patched into ``Qwen2MLP.forward`` with
ceil(seqlen / hidden) shards, ``TiledFusedLogitsLoss`` over the LM head with ~1 GiB fp32 logit shards, HF
non-reentrant gradient checkpointing (in train mode, as a trainer runs it), and the same DeepSpeed config, AdamW
and schedule as our stage 4 (``parse_stage_args`` of the packaged recipe; ``longvila.engine.trainer.build_optimizer``).
``--untiled`` drops TiledMLP and the tiled loss (plain HF loss) to show what ALST's tiling buys.

The tokens are ours: the first two micro-batches our stage-4 stream yields for ``--length`` (same data, seed and
packing). Rank r feeds batch r to the adapter, so step 1 trains batch 0 and step 2 batch 1, as our run does.
One difference is ALST's, not ours to fix: with ``sdpa`` its Ulysses wrapper drops the attention mask and attends
causally across packed-document boundaries, where our attention stops at them; losses therefore differ a little.

Rank 0 writes one JSON line per step to ``<out>/alst_metrics.jsonl``: loss, grad norm, step seconds, and the
resident-set peaks as the max over ranks, measured as our trainer does: the whole run's and the step's own.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from types import SimpleNamespace


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a VILA-layout folder (its llm/ is used)")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--data_dir", type=Path, help="our synthetic stage-4 data, built there if missing")
    data.add_argument("--data_path", type=Path, help="a long-text JSONL file, as our --data_path")
    parser.add_argument("--length", type=int, required=True, help="tokens per sequence (global, before SP)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--untiled", action="store_true", help="Ulysses only: no TiledMLP, no tiled loss")
    parser.add_argument("--loss_shard_rows", type=int, default=0,
                        help="rows per TiledFusedLogitsLoss shard (0: ALST's default, ~1 GiB of fp32 logits per "
                        "shard); benchmarks/alst_compare.py sets our loss chunk here")
    return parser.parse_args()


def patch_tiled_mlp() -> None:
    """ALST's documented recipe: replace the HF MLP forward with TiledMLP before the model is built."""
    import torch
    import torch.distributed as dist
    from deepspeed.runtime.sequence_parallel.ulysses_sp import TiledMLP
    from transformers.models.qwen2 import modeling_qwen2

    def mlp_forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))

    def tiled_forward(self, x):
        shards = torch.tensor(math.ceil(x.shape[-2] / x.shape[-1]))
        dist.all_reduce(shards, op=dist.ReduceOp.MAX)  # all ranks agree, as ALST does
        params = [self.down_proj.weight, self.gate_proj.weight, self.up_proj.weight]
        return TiledMLP.apply(mlp_forward, self, x, int(shards), params)

    modeling_qwen2.Qwen2MLP.forward = tiled_forward


def tiled_scaled_loss(lm_head, hidden, shift_labels, scale: float, tied: bool, shard_rows: int = 0):
    """``scale`` x (sum of token CE) through TiledFusedLogitsLoss, with ALST's ~1 GiB shards of fp32 logits
    (``shard_rows`` > 0: shards of that many rows instead).

    The scale goes inside the shard function: TiledFusedLogitsLoss runs each shard's backward during its forward
    with an incoming gradient of 1, so the LM-head weight gradient never sees a factor applied to its output later
    (only the hidden-state gradient does). Scaling the output afterwards left the head's gradient count-times too
    large (grad norms 50x ours in tests/stages/test_alst_reference.py).
    """
    import torch.nn.functional as F
    from deepspeed.runtime.sequence_parallel.ulysses_sp import TiledFusedLogitsLoss

    vocab = lm_head.weight.shape[0]

    def loss_fn(head, x, y):
        logits = head(x).float()
        return F.cross_entropy(logits.view(-1, vocab), y.reshape(-1), ignore_index=-100, reduction="sum") * scale

    rows = hidden.shape[0] * hidden.shape[1]
    shards = math.ceil(rows / shard_rows) if shard_rows > 0 else max(1, math.ceil(rows * vocab * 4 / 2**30))
    weight = lm_head.weight
    if not tied:
        return TiledFusedLogitsLoss.apply(loss_fn, lm_head, hidden, shift_labels, None, shards, [weight], "sum")
    # Tied embeddings: TiledFusedLogitsLoss marks the weight ready on its last shard, inside the forward, so ZeRO
    # reduces it there and asserts when the embedding's gradient arrives later in the backward. Holding the flag
    # down through the loss and raising it before the backward makes ZeRO reduce the summed gradient once.
    weight.ds_grad_is_ready = False
    loss = TiledFusedLogitsLoss.apply(loss_fn, lm_head, hidden, shift_labels, None, shards, [], "sum")
    weight.ds_grad_is_ready = True
    return loss


def our_batches(args: argparse.Namespace, stage, count: int) -> list[dict]:
    """The first ``count`` micro-batches our stage-4 stream yields for these flags (same data, seed and packing)."""
    from transformers import AutoTokenizer

    from longvila.data.collate import collate
    from longvila.data.packing import PackedTextDataset
    from longvila.data.synthetic import ensure_synthetic_data
    from longvila.engine.data_stream import MicroBatchStream

    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint / "llm")
    path = args.data_path or ensure_synthetic_data("s4_context_ext", args.data_dir)
    dataset = PackedTextDataset(path, tokenizer, args.length)
    stream = MicroBatchStream(dataset, lambda samples: collate(samples, tokenizer.pad_token_id),
                              stage.train.per_device_train_batch_size, seed=stage.train.seed)
    return [stream.next_batch() for _ in range(count)]


def main() -> None:
    args = parse_args()
    import deepspeed
    import torch
    import torch.distributed as dist
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF, UlyssesSPDataLoaderAdapter
    from transformers import AutoModelForCausalLM

    from longvila.config import parse_stage_args
    from longvila.engine.deepspeed_config import build_deepspeed_config
    from longvila.engine.metrics import PeakMemoryWindows
    from longvila.engine.trainer import build_optimizer
    from longvila.model.rope import extend_context

    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    stage = parse_stage_args("s4_context_ext", ["--output_dir", str(args.out), "--bf16", "false",
                                                "--model_max_length", str(args.length)])
    torch.manual_seed(stage.train.seed)
    if not args.untiled:
        patch_tiled_mlp()
    model = AutoModelForCausalLM.from_pretrained(args.checkpoint / "llm", dtype=torch.float32,
                                                 attn_implementation="sdpa")
    # the RoPE base and context length our stage 4 sets (the recipe's rope_theta)
    extend_context(SimpleNamespace(llm=model), max(model.config.max_position_embeddings, args.length),
                   theta=stage.model.rope_theta)
    mpu = UlyssesSPAttentionHF.register_with_transformers(model, "sdpa", sequence_parallel_size=world,
                                                          micro_batch_size=stage.train.per_device_train_batch_size,
                                                          seq_length_is_variable=True)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    optimizer, scheduler = build_optimizer(list(model.parameters()), stage.train, total_steps=args.steps)
    config = build_deepspeed_config(stage.train, world_size=world // mpu.get_sequence_parallel_world_size(), bf16=False)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config, mpu=mpu)
    # from_pretrained leaves the model in eval mode, where HF skips gradient checkpointing: without this the runner
    # kept every layer's activations and recomputed nothing (runs before 2026-12-05 13:15 UTC did exactly that)
    engine.train()

    batches = our_batches(args, stage, world * math.ceil(args.steps / world))
    mine = [{"input_ids": b["input_ids"], "position_ids": b["position_ids"], "labels": b["labels"]}
            for b in batches[rank::world]]
    loader = UlyssesSPDataLoaderAdapter(mine, sp_rank=rank, sp_group=mpu.get_sequence_parallel_group(),
                                        sp_world_size=world, device=torch.device("cpu"))
    args.out.mkdir(parents=True, exist_ok=True)
    log = open(args.out / "alst_metrics.jsonl", "w") if rank == 0 else None
    peaks = PeakMemoryWindows(torch.device("cpu"))
    for step in range(1, args.steps + 1):
        batch = next(loader)
        peaks.begin_step()
        dist.barrier()
        started = time.perf_counter()
        labels = batch["shift_labels"]
        # with an mpu DeepSpeed sums the SP ranks' gradients and averages over data parallelism only
        total = (labels != -100).sum().float()
        dist.all_reduce(total)
        scale = (world // mpu.get_sequence_parallel_world_size()) / float(total)
        if args.untiled:
            logits = engine(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits.float()
            loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1),
                                                     ignore_index=-100, reduction="sum") * scale
        else:
            hidden = engine.module.model(input_ids=batch["input_ids"],
                                         position_ids=batch["position_ids"]).last_hidden_state
            loss = tiled_scaled_loss(engine.module.lm_head, hidden, labels, scale, model.config.tie_word_embeddings,
                                     args.loss_shard_rows)
        loss_sum = loss.detach() / scale
        dist.all_reduce(loss_sum)
        engine.backward(loss)
        engine.step()
        dist.barrier()
        seconds = time.perf_counter() - started
        fullest = torch.tensor(peaks.end_step())  # (run peak, step peak), max over ranks as in our trainer
        dist.all_reduce(fullest, op=dist.ReduceOp.MAX)
        if log is not None:
            norm = engine.get_global_grad_norm()
            record = {"step": step, "loss": float(loss_sum / total), "num_tokens": int(total),
                      "grad_norm": float(norm) if norm is not None else float("nan"),
                      "step_seconds": seconds, "tokens_per_sec": args.length / seconds, "max_memory_gb": float(fullest[0]),
                      "step_peak_memory_gb": float(fullest[1])}
            log.write(json.dumps(record) + "\n")
            log.flush()
            print(json.dumps(record), flush=True)
    dist.barrier()


if __name__ == "__main__":
    main()
