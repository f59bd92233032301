"""The one training loop every stage runs: a DeepSpeed engine, globally normalised loss, metrics, checkpoints.

Loss normalisation is the part that is easy to get wrong. The model returns a *sum* of token cross-entropies and
the number of supervised tokens. Before the first backward of an optimizer step we know every micro-batch of that
step, so we count the supervised tokens of the whole step across all data-parallel ranks (N). Each micro-batch then
backpropagates ``loss_sum * world * GAS / N``: DeepSpeed divides by GAS and averages over its world, which leaves
exactly ``sum(token CE) / N`` -- the gradient a single process would compute on the same global batch.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from longvila.config import TrainArguments
from longvila.engine.activation_offload import offload_context
from longvila.engine.data_stream import MicroBatchStream
from longvila.engine.deepspeed_config import build_deepspeed_config
from longvila.engine.dist import DistEnv
from longvila.engine.metrics import MetricsLogger, PeakMemoryWindows
from longvila.engine.rng import rng_state, set_rng_state

CHECKPOINT_DIR = "checkpoints"


def move_to_device(batch: dict[str, Any], device: torch.device, float_dtype: torch.dtype) -> dict[str, Any]:
    """Tensors go to the device; floating media take the training dtype; nested media lists are kept."""

    def move(value):
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            return value.to(float_dtype) if value.is_floating_point() else value
        if isinstance(value, (list, tuple)):
            return type(value)(move(item) for item in value)
        return value

    return {key: move(value) for key, value in batch.items()}


def uses_bf16(train: TrainArguments, device: torch.device) -> bool:
    """bf16 on CUDA unless --bf16 says otherwise; fp32 on CPU (where bf16 matmuls are slow and inexact)."""
    return device.type == "cuda" if train.bf16 is None else bool(train.bf16)


def training_dtype(train: TrainArguments, device: torch.device) -> torch.dtype:
    """The dtype weights are loaded in: the training dtype, so a bf16 run never holds an fp32 copy."""
    return torch.bfloat16 if uses_bf16(train, device) else torch.float32


@dataclass
class StepResult:
    loss: float
    num_tokens: int
    num_positions: int


def build_optimizer(params: list[torch.nn.Parameter], train: TrainArguments, total_steps: int):
    """AdamW and the warmup + decay schedule every stage trains with (benchmarks/alst_step.py gives the peer the same)."""
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW(params, lr=train.learning_rate, weight_decay=train.weight_decay, betas=(0.9, 0.95))
    scheduler = get_scheduler(train.lr_scheduler_type, optimizer,
                              num_warmup_steps=math.ceil(train.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    return optimizer, scheduler


class Trainer:
    """Runs ``max_steps`` optimizer steps of ``model`` on ``stream``; resumable; rank 0 logs."""

    def __init__(
        self,
        model: torch.nn.Module,
        stream: MicroBatchStream,
        train: TrainArguments,
        env: DistEnv,
        count_supervised: Callable[[dict[str, Any]], int],
        total_steps: int,
        dp_group: Optional[dist.ProcessGroup] = None,
        ds_config: Optional[dict[str, Any]] = None,
    ):
        import deepspeed

        self.train_args, self.env, self.stream = train, env, stream
        self.count_supervised = count_supervised
        self.total_steps = total_steps
        self.dp_group = dp_group
        self.output_dir = Path(train.output_dir)
        self.bf16 = uses_bf16(train, env.device)
        self.dtype = training_dtype(train, env.device)
        model.to(device=env.device, dtype=self.dtype)
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("no trainable parameters: the stage froze the whole model")
        optimizer, scheduler = build_optimizer(trainable, train, total_steps)
        self.ds_config = ds_config or build_deepspeed_config(train, env.world_size, self.bf16)
        if self.ds_config["zero_optimization"].get("stage") == 3:
            register_external = getattr(model, "zero3_external_parameters", lambda: [])
            for param in register_external():
                deepspeed.zero.register_external_parameter(model, param)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=self.ds_config,
            dist_init_required=False,
        )
        self.step = 0

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_root(self) -> Path:
        return self.output_dir / CHECKPOINT_DIR

    def save_checkpoint(self) -> Path:
        """Model + optimizer + scheduler (DeepSpeed) and, per rank, data position + RNG (ours)."""
        root, tag = self._checkpoint_root(), f"step-{self.step}"
        self.engine.save_checkpoint(str(root), tag=tag, client_state={"step": self.step})
        state = {"step": self.step, "stream": self.stream.state_dict(), "rng": rng_state()}
        torch.save(state, root / tag / f"trainer_state_rank{self.env.rank}.pt")
        dist.barrier()
        if self.env.is_main and self.train_args.save_total_limit:
            tags = sorted((p for p in root.glob("step-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
            for old in tags[: -self.train_args.save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        dist.barrier()
        return root / tag

    def resolve_resume(self, spec: Optional[str]) -> Optional[Path]:
        if not spec:
            return None
        if spec == "latest":
            tags = sorted(self._checkpoint_root().glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
            if not tags:
                raise FileNotFoundError(f"--resume_from_checkpoint latest: no checkpoint under {self._checkpoint_root()}")
            return tags[-1]
        path = Path(spec)
        if not (path / f"trainer_state_rank{self.env.rank}.pt").is_file():
            raise FileNotFoundError(f"--resume_from_checkpoint {path}: not a checkpoint of this run and world size")
        return path

    def load_checkpoint(self, path: Path) -> None:
        load_path, _ = self.engine.load_checkpoint(str(path.parent), tag=path.name)
        if load_path is None:
            raise FileNotFoundError(f"DeepSpeed found no checkpoint in {path}")
        state = torch.load(path / f"trainer_state_rank{self.env.rank}.pt", weights_only=False)
        self.step = state["step"]
        self.stream.load_state_dict(state["stream"])
        set_rng_state(state["rng"])

    # ------------------------------------------------------------------ training
    def _all_reduce(self, values: list[float], group=None, op=dist.ReduceOp.SUM) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64)
        if self.env.backend == "nccl":
            tensor = tensor.to(self.env.device)
        dist.all_reduce(tensor, op=op, group=group)
        return tensor.tolist()

    def train_step(self) -> StepResult:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches."""
        gas = self.train_args.gradient_accumulation_steps
        micro_batches = [self.stream.next_batch() for _ in range(gas)]
        local_count = sum(self.count_supervised(batch) for batch in micro_batches)
        (global_count,) = self._all_reduce([float(local_count)], group=self.dp_group)
        scale = self.env.world_size * gas / max(global_count, 1.0)
        loss_sum_total, positions = 0.0, 0
        self.engine.train()
        offload = self.train_args.gradient_checkpointing == "offload"
        for batch in micro_batches:
            batch = move_to_device(batch, self.env.device, self.dtype)
            with offload_context(offload):
                output = self.engine(**batch)
                self.engine.backward(output.loss_sum * scale)
            self.engine.step()
            loss_sum_total += float(output.loss_sum.detach())
            positions += int(getattr(output, "num_positions", batch["attention_mask"].sum()))
        loss_sum_total, positions = self._all_reduce([loss_sum_total, float(positions)])
        self.step += 1
        return StepResult(loss_sum_total / max(global_count, 1.0), int(global_count), int(positions))

    def _source_counts(self) -> dict[str, dict[str, int]]:
        """Cumulative per-source counts of a mixture, summed once per DP replica (SP ranks read the same samples).

        ``samples_per_source``: samples trained on since the run began (resumes continue the count), so its sum is
        steps x GAS x batch x DP; ``skipped_per_source``: bad samples drawn and skipped, malformed records included,
        summing to ``skipped_samples``. Empty for a single dataset.
        """
        stream = self.stream
        names = stream.sources
        if not names:
            return {}
        local = [stream.samples_per_source[n] for n in names] + [stream.skipped_per_source[n] for n in names]
        total = [int(value) for value in self._all_reduce([float(v) for v in local], group=self.dp_group)]
        return {"samples_per_source": dict(zip(names, total[: len(names)])),
                "skipped_per_source": dict(zip(names, total[len(names):]))}

    def train(self, resume_from: Optional[str] = None) -> list[dict[str, Any]]:
        resume_path = self.resolve_resume(resume_from)
        if resume_path is not None:
            self.load_checkpoint(resume_path)
        logger = MetricsLogger(self.output_dir, self.env.is_main, resume_step=self.step if resume_path else None)
        progress = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step",
                        disable=not self.env.is_main or self.train_args.disable_tqdm, dynamic_ncols=True)
        history = []
        peaks = PeakMemoryWindows(self.env.device)
        try:
            while self.step < self.total_steps:
                peaks.begin_step()
                started = time.perf_counter()
                result = self.train_step()
                elapsed = time.perf_counter() - started
                # the fullest rank: SP ranks differ (the last shard carries the padding), and it runs out first
                run_peak, step_peak = self._all_reduce(list(peaks.end_step()), op=dist.ReduceOp.MAX)
                grad_norm = self.engine.get_global_grad_norm()
                (skipped,) = self._all_reduce([float(self.stream.num_skipped)], group=self.dp_group)
                record = {
                    "step": self.step,
                    "loss": result.loss,
                    "num_tokens": result.num_tokens,
                    "learning_rate": float(self.scheduler.get_last_lr()[0]),
                    "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                    "tokens_per_sec": result.num_positions / elapsed,
                    "step_seconds": elapsed,
                    "max_memory_gb": run_peak,
                    # this step alone: what activations and optimizer state need, apart from loading
                    "step_peak_memory_gb": step_peak,
                    "skipped_samples": int(skipped),
                    "epoch": self.stream.epoch,
                }
                record.update(self._source_counts())
                history.append(record)
                if self.step % self.train_args.logging_steps == 0 or self.step == self.total_steps:
                    logger.log(record)
                progress.update(1)
                progress.set_postfix(loss=f"{result.loss:.4f}", lr=f"{record['learning_rate']:.2e}")
                if self.train_args.save_steps and self.step % self.train_args.save_steps == 0:
                    self.save_checkpoint()
        finally:
            progress.close()
            logger.close()
        return history

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module
