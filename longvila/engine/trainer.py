"""The one training loop every stage runs: a DeepSpeed engine, globally normalised loss, metrics, checkpoints.

Checkpoints (save, load, resharding) are ``longvila/engine/checkpointer.py``'s; the trainer only says when. A
non-finite loss stops the run before anything is saved, naming the last complete checkpoint.

Loss normalisation is the part that is easy to get wrong. The model returns a *sum* of token cross-entropies and
the number of supervised tokens. Before the first backward of an optimizer step we know every micro-batch of that
step, so we count the supervised tokens of the whole step across all data-parallel ranks (N). Each micro-batch then
backpropagates ``normalised_loss`` (``longvila/distributed/loss.py``): DeepSpeed divides by GAS and averages over its
world, which leaves exactly ``sum(token CE) / N``, the gradient a single process would compute on the same batch.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from longvila.config import TrainArguments
from longvila.distributed.loss import mean_loss, normalised_loss
from longvila.distributed.mesh import ParallelDims, SequenceParallelConfig
from longvila.engine import checkpoint_store as store
from longvila.engine.activation_offload import offload_context
from longvila.engine.checkpoint_store import RunLayout
from longvila.engine.checkpointer import Checkpointer
from longvila.engine.data_stream import MicroBatchStream
from longvila.engine.deepspeed_config import build_deepspeed_config, zero_stage
from longvila.engine.dist import DistEnv
from longvila.engine.faults import inject, planned_fault
from longvila.engine.metrics import MetricsLogger, PeakMemoryWindows
from longvila.engine.sample_log import SampleLog, truncate_sample_logs
from longvila.engine.step_metrics import StepReductions
from longvila.errors import TrainingError

logger = logging.getLogger("longvila")


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
    num_positions: int  # real positions of the expanded global batch, each counted once
    data_seconds: float = 0.0  # this rank's wait for its micro-batches
    decode_seconds: float = 0.0  # this rank's decoding of its frames for them (in background threads)


def build_optimizer(params: list[torch.nn.Parameter], train: TrainArguments, total_steps: int):
    """AdamW and the warmup + decay schedule every stage trains with (benchmarks/alst_step.py gives the peer the same)."""
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW(params, lr=train.learning_rate, weight_decay=train.weight_decay, betas=(0.9, 0.95))
    scheduler = get_scheduler(train.lr_scheduler_type, optimizer,
                              num_warmup_steps=math.ceil(train.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    return optimizer, scheduler


class Trainer:
    """Runs ``max_steps`` optimizer steps of ``model`` on ``stream``; resumable; rank 0 logs.

    ``dims`` is the run's parallel layout (default: every rank its own data-parallel replica); it says over which
    group counts are summed and goes into every checkpoint, so a resume can tell whether it carries over file for
    file.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        stream: MicroBatchStream,
        train: TrainArguments,
        env: DistEnv,
        count_supervised: Callable[[dict[str, Any]], int],
        total_steps: int,
        dims: Optional[ParallelDims] = None,
        ds_config: Optional[dict[str, Any]] = None,
    ):
        import deepspeed

        self.train_args, self.env, self.stream = train, env, stream
        self.count_supervised = count_supervised
        self.total_steps = total_steps
        self.dims = dims or ParallelDims(env.world_size, env.rank, SequenceParallelConfig())
        self.reductions = StepReductions(env.device, self.dims.count_group)
        self.output_dir = Path(train.output_dir)
        self.bf16 = uses_bf16(train, env.device)
        self.dtype = training_dtype(train, env.device)
        self.fault = planned_fault()
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
        sp = self.dims.sp
        self.layout = RunLayout(
            world_size=env.world_size, dp_size=self.dims.dp_size, sp_size=sp.sp_size, ring_size=sp.ring_size,
            ring_type=sp.ring_type,
            micro_batch=train.per_device_train_batch_size, grad_accum=train.gradient_accumulation_steps,
            zero_stage=zero_stage(self.ds_config))
        self.checkpointer = Checkpointer(store.checkpoint_root(self.output_dir), self.layout, env.rank,
                                         env.is_main, train.save_total_limit, self.fault)
        # resolved before the engine exists: a checkpoint of another layout needs an engine that loads universally
        self.resume = self.checkpointer.resume_request(train.resume_from_checkpoint)
        self.ds_config = self.checkpointer.engine_config(self.ds_config, self.resume)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=self.ds_config,
            dist_init_required=False,
        )
        self.step = 0

    # ------------------------------------------------------------------ checkpoints
    @property
    def last_checkpoint(self) -> Optional[Path]:
        """The newest complete checkpoint this run saved or resumed from."""
        return self.checkpointer.last

    def save_checkpoint(self) -> Path:
        return self.checkpointer.save(self.step, self.engine, self.stream)

    # ------------------------------------------------------------------ training
    def train_step(self) -> StepResult:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches."""
        gas = self.train_args.gradient_accumulation_steps
        waiting = time.perf_counter()
        micro_batches = [self.stream.next_batch() for _ in range(gas)]
        data_seconds = time.perf_counter() - waiting
        decode_seconds = sum(batch.pop("decode_seconds", 0.0) for batch in micro_batches)
        local_count = sum(self.count_supervised(batch) for batch in micro_batches)
        (global_count,) = self.reductions.sum_over_replicas([local_count])
        loss_sum_total, positions = 0.0, 0
        self.engine.train()
        offload = self.train_args.gradient_checkpointing == "offload"
        for index, batch in enumerate(micro_batches):
            batch = move_to_device(batch, self.env.device, self.dtype)
            with offload_context(offload):
                output = self.engine(**batch)
                self.engine.backward(normalised_loss(output.loss_sum, global_count, self.env.world_size, gas))
            if index == 0:
                inject(self.fault, "mid_step", self.step + 1, self.env.rank)
            self.engine.step()
            loss_sum_total += float(output.loss_sum.detach())
            positions += int(output.num_positions)
        loss_sum_total, positions = self.reductions.sum_over_shards([loss_sum_total, positions])
        self.step += 1
        return StepResult(mean_loss(loss_sum_total, global_count), int(global_count), int(positions), data_seconds,
                          decode_seconds)

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
        total = [int(value) for value in self.reductions.sum_over_replicas(local)]
        return {"samples_per_source": dict(zip(names, total[: len(names)])),
                "skipped_per_source": dict(zip(names, total[len(names):]))}

    def _check_finite(self, record: dict[str, Any]) -> None:
        """A non-finite loss stops the run before anything is saved: the last checkpoint stays the good one."""
        if math.isfinite(record["loss"]):
            return
        last = (f"the last complete checkpoint is {self.last_checkpoint} (--resume_from_checkpoint latest, perhaps "
                "with a lower --learning_rate)" if self.last_checkpoint else "no checkpoint was saved")
        raise TrainingError(f"step {record['step']}: the loss is {record['loss']} (grad norm {record['grad_norm']}); "
                            f"nothing after it is trained or saved; {last}")

    def _start(self) -> bool:
        """Resume if ``--resume_from_checkpoint`` asked; returns whether the run resumed."""
        if self.resume is not None:
            self.step = self.checkpointer.load(self.resume, self.engine, self.stream)
        if self.env.is_main and self.train_args.log_sample_ids:
            truncate_sample_logs(self.output_dir, self.step if self.resume else None)
        dist.barrier()
        return self.resume is not None

    def train(self) -> list[dict[str, Any]]:
        resumed = self._start()
        metrics = MetricsLogger(self.output_dir, self.env.is_main, resume_step=self.step if resumed else None)
        samples = SampleLog(self.output_dir, self.stream.dp_rank,
                            enabled=bool(self.train_args.log_sample_ids) and self.dims.sp_rank == 0)
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
                run_peak, step_peak, data_seconds, decode_seconds = self.reductions.max_over_ranks(
                    [*peaks.end_step(), result.data_seconds, result.decode_seconds])
                grad_norm = self.engine.get_global_grad_norm()
                (skipped,) = self.reductions.sum_over_replicas([self.stream.num_skipped])
                drawn, skipped_ids = self.stream.take_step_log()
                samples.log(self.step, self.stream.epoch, drawn, skipped_ids)
                record = {
                    "step": self.step,
                    "loss": result.loss,
                    "num_tokens": result.num_tokens,
                    "num_positions": result.num_positions,
                    "learning_rate": float(self.scheduler.get_last_lr()[0]),
                    "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                    "tokens_per_sec": result.num_positions / elapsed,
                    "step_seconds": elapsed,
                    "max_memory_gb": run_peak,
                    # this step alone: what activations and optimizer state need, apart from loading
                    "step_peak_memory_gb": step_peak,
                    # the slowest rank's wait for data and its frame decoding (done ahead, in the background)
                    "data_seconds": data_seconds,
                    "decode_seconds": decode_seconds,
                    "skipped_samples": int(skipped),
                    "epoch": self.stream.epoch,
                }
                record.update(self._source_counts())
                history.append(record)
                if self.step % self.train_args.logging_steps == 0 or self.step == self.total_steps \
                        or not math.isfinite(result.loss):
                    metrics.log(record)
                self._check_finite(record)
                progress.update(1)
                progress.set_postfix(loss=f"{result.loss:.4f}", lr=f"{record['learning_rate']:.2e}")
                if self.train_args.save_steps and self.step % self.train_args.save_steps == 0:
                    self.save_checkpoint()
        finally:
            progress.close()
            metrics.close()
            getattr(self.stream, "close", lambda: None)()  # background loading stops with training
        return history

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module
