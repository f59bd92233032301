"""Load micro-batches ahead of the step, in background threads, without losing the stream's exactness.

Decoding a long video takes seconds; done on the training thread the accelerator waits for it. Here one producer
thread walks the :class:`~longvila.engine.data_stream.MicroBatchStream` (which samples, which are skipped) and
``num_workers`` threads collate (decode and preprocess) up to ``num_workers + 1`` batches ahead (each a rank's share
of a long video's pixels, so the lookahead is kept short). decord, PIL
and the image processor's numpy work release the GIL, so threads overlap with the step without the start-up and
pickling costs of worker processes, and the stream's state stays in one process.

What the trainer sees is exactly the synchronous stream: every batch carries the stream's position after it, and
``state_dict``, the skip counts and the per-step sample log are those of the last batch handed out, not of the
last one loaded. ``num_workers=0`` loads inline.

A batch whose media failed to decode on some SP rank (``media_failed``, see ``longvila/data/rank_media.py``) is
never trained on: ``agree`` (an all-reduce over the SP group) tells every rank which rows failed anywhere, the
stream marks those samples bad, goes back to the position before the batch and loads it again, so the samples are
skipped, and counted, once and alike on every rank.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from longvila.engine.data_stream import MicroBatchStream, StreamPosition


@dataclass
class _Loaded:
    batch: Future
    position: StreamPosition  # the stream after this batch
    drawn: list[int]
    skipped: list[int]
    indices: list[int]  # dataset index of every row


@dataclass
class _Failed:
    error: BaseException


@dataclass
class _Consumed:
    position: StreamPosition
    drawn: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)


def _done(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


class PrefetchingStream:
    """A :class:`MicroBatchStream` (same interface) whose batches are loaded ahead by background threads."""

    def __init__(self, stream: MicroBatchStream, num_workers: int = 0,
                 agree: Optional[Callable[[list[int]], list[int]]] = None):
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.stream, self.num_workers, self.agree = stream, num_workers, agree
        self._consumed = _Consumed(stream.position())
        self._pool: Optional[ThreadPoolExecutor] = None
        self._queue: Optional[queue.Queue] = None
        self._stop: Optional[threading.Event] = None
        self._producer: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ what the trainer reads
    dataset = property(lambda self: self.stream.dataset)
    dp_rank = property(lambda self: self.stream.dp_rank)
    dp_size = property(lambda self: self.stream.dp_size)
    sources = property(lambda self: self.stream.sources)
    samples_per_epoch = property(lambda self: self.stream.samples_per_epoch)
    epoch = property(lambda self: self._consumed.position.epoch)
    num_skipped = property(lambda self: self._consumed.position.num_skipped)
    samples_per_source = property(lambda self: self._consumed.position.samples_per_source)
    skipped_per_source = property(lambda self: self._consumed.position.skipped_per_source)

    def state_dict(self) -> dict:
        return self.stream.state_dict(self._consumed.position)

    def load_state_dict(self, state: dict) -> None:
        self.close()
        self.stream.load_state_dict(state)
        self._consumed = _Consumed(self.stream.position())

    def take_step_log(self) -> tuple[list[int], list[int]]:
        consumed = self._consumed
        drawn, skipped = consumed.drawn, consumed.skipped
        consumed.drawn, consumed.skipped = [], []
        return drawn, skipped

    # ------------------------------------------------------------------ loading
    def next_batch(self) -> dict[str, Any]:
        while True:
            loaded = self._next_loaded()
            batch = loaded.batch.result()
            failed = batch.pop("media_failed", [])
            failed = self.agree(failed) if self.agree is not None else failed
            if not failed:
                self._accept(loaded)
                return batch
            self._reload_without(loaded, failed)

    def _accept(self, loaded: _Loaded) -> None:
        consumed = self._consumed
        self._consumed = _Consumed(loaded.position, consumed.drawn + loaded.drawn, consumed.skipped + loaded.skipped)

    def _reload_without(self, loaded: _Loaded, rows: list[int]) -> None:
        """Some rank could not decode ``rows``: mark them bad and load the batch again from before it."""
        self.close()
        self.stream.known_bad.update(loaded.indices[row] for row in rows)
        self.stream.seek(self._consumed.position)

    def _load_one(self, submit: Callable[..., Future]) -> _Loaded:
        samples, indices = self.stream.next_samples()
        position = self.stream.position()
        drawn, skipped = self.stream.take_step_log()
        return _Loaded(submit(self.stream.collate_fn, samples), position, drawn, skipped, indices)

    def _next_loaded(self) -> _Loaded:
        if self.num_workers == 0:
            return self._load_one(lambda fn, samples: _done(fn(samples)))
        if self._producer is None:
            self._start()
        item = self._queue.get()
        if isinstance(item, _Failed):
            self.close()
            raise item.error
        return item

    def _start(self) -> None:
        self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="longvila-load")
        self._queue = queue.Queue(maxsize=self.num_workers)  # plus the one the producer holds
        self._stop = threading.Event()
        self._producer = threading.Thread(target=self._produce, args=(self._pool, self._queue, self._stop),
                                          name="longvila-batches", daemon=True)
        self._producer.start()

    def _produce(self, pool: ThreadPoolExecutor, out: queue.Queue, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                item = self._load_one(pool.submit)
                while not stop.is_set():
                    try:
                        out.put(item, timeout=0.05)
                        break
                    except queue.Full:
                        continue
        except BaseException as error:  # noqa: BLE001 - handed to the training thread, which raises it
            out.put(_Failed(error))

    def close(self) -> None:
        """Stop loading ahead; the stream is left after the last batch loaded (``seek`` puts it back)."""
        if self._producer is None:
            return
        self._stop.set()
        while self._producer.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._producer.join()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._producer = self._pool = self._queue = self._stop = None
        self.stream.seek(self._consumed.position)


def failed_rows_agreement(group, device, batch_size: int) -> Callable[[list[int]], list[int]]:
    """``agree`` for an SP group: the rows that failed on any of its ranks (one small all-reduce per batch)."""
    import torch
    import torch.distributed as dist

    def agree(failed: list[int]) -> list[int]:
        flags = torch.zeros(batch_size, dtype=torch.int32, device=device)
        flags[list(failed)] = 1
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=group)
        return flags.nonzero().flatten().tolist()

    return agree
