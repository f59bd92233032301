"""A persistent pool of real gloo ranks for multi-process tests.

Starting processes (``spawn``: each one imports torch) costs seconds on a 2-core machine, so the tests share one
world per session: :class:`World` spawns N ranks once, each initialises gloo through a FileStore (no port to pick,
so no port races between parallel test runs), then runs submitted functions ``fn(rank, world_size, *args)`` in
lock-step. A failure on any rank (or a timeout) raises in the test with that rank's traceback, and the world is
torn down and restarted for the next test, because the other ranks may be stuck in a collective.

Submitted functions must be module-level (picklable by qualified name).
"""

from __future__ import annotations

import os
import queue
import tempfile
import time
import traceback
from datetime import timedelta

import torch.multiprocessing as mp

_MESHES: dict = {}


def get_mesh(cfg):
    """build_mesh(cfg), cached per worker process (all ranks run the same task sequence, so caches agree)."""
    from longvila.distributed.mesh import build_mesh

    if cfg not in _MESHES:
        _MESHES[cfg] = build_mesh(cfg)
    return _MESHES[cfg]


def _worker(rank: int, world_size: int, init_file: str, tasks, results) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=60))
    try:
        while True:
            task = tasks.get()
            if task is None:
                break
            fn, args = task
            try:
                results.put((rank, True, fn(rank, world_size, *args)))
            except BaseException:  # noqa: BLE001 - report everything to the parent
                results.put((rank, False, traceback.format_exc()))
    finally:
        dist.destroy_process_group()


class WorldError(AssertionError):
    pass


class World:
    def __init__(self, size: int = 4, timeout: float = 120.0) -> None:
        self.size, self.timeout = size, timeout
        self._procs = None

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        self._tmp = tempfile.TemporaryDirectory(prefix="longvila-world-")
        init_file = os.path.join(self._tmp.name, "store")
        self._tasks = [ctx.Queue() for _ in range(self.size)]
        self._results = ctx.Queue()
        self._procs = [
            ctx.Process(target=_worker, args=(r, self.size, init_file, self._tasks[r], self._results), daemon=True)
            for r in range(self.size)
        ]
        for p in self._procs:
            p.start()

    def run(self, fn, *args, timeout: float | None = None) -> list:
        """Run ``fn(rank, world_size, *args)`` on every rank; return the per-rank results in rank order."""
        if self._procs is None:
            self._start()
        for q in self._tasks:
            q.put((fn, args))
        out: dict[int, object] = {}
        errors: list[str] = []
        limit = timeout or self.timeout
        deadline = time.monotonic() + limit
        try:
            while len(out) + len(errors) < self.size:
                try:
                    rank, ok, value = self._results.get(timeout=1.0)
                except queue.Empty:
                    dead = [r for r, p in enumerate(self._procs) if p.exitcode is not None]
                    if dead:
                        errors.append(f"ranks {dead} exited (codes {[self._procs[r].exitcode for r in dead]})")
                        break
                    if time.monotonic() > deadline:
                        missing = sorted(set(range(self.size)) - set(out))
                        errors.append(f"timeout after {limit}s waiting for ranks {missing}")
                        break
                    continue
                if ok:
                    out[rank] = value
                else:
                    errors.append(f"rank {rank}:\n{value}")
                    break
        finally:
            if errors:
                self.close(graceful=False)  # the other ranks may be blocked in a collective
        if errors:
            raise WorldError(f"{fn.__name__} failed:\n" + "\n".join(errors))
        return [out[r] for r in range(self.size)]

    def close(self, graceful: bool = True) -> None:
        """Stop the ranks (politely when idle, by killing our own child processes otherwise)."""
        if self._procs is None:
            return
        if graceful:
            for q in self._tasks:
                q.put(None)
            for p in self._procs:
                p.join(timeout=10)
        for p in self._procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        self._procs = None
        self._tmp.cleanup()
