"""Where resumable checkpoints live, how a save becomes complete atomically, and which one ``latest`` means.

A save is staged: every rank writes into ``checkpoints/.tmp-step-N``; after a barrier rank 0 writes the
completion marker ``checkpoint.json`` (the step and the layout that wrote it) into that folder, flushes it, and
renames the folder to ``step-N``. A rename within one folder is atomic, so a folder named ``step-N`` with its
marker is whole, and anything else (a ``.tmp-`` folder left by a kill or a full disk, a ``step-N`` without its
marker, or one whose files no longer match the names and sizes the marker lists) is incomplete. ``latest`` is the newest complete checkpoint; incomplete ones are skipped with a warning
and left for inspection until a newer complete checkpoint supersedes them. Pruning (``save_total_limit``) runs
only after a save is complete, so the previous checkpoint survives any failure of the next one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

from longvila.errors import CheckpointError

logger = logging.getLogger("longvila")

CHECKPOINT_DIR = "checkpoints"  # under a stage's output_dir
MARKER = "checkpoint.json"
TRAINER_STATE = "trainer_state_rank{rank}.pt"  # per rank: data position, skip counts, RNG
STAGING_PREFIX = ".tmp-"
_NAME = re.compile(r"^(\.tmp-)?step-(\d+)$")


@dataclass(frozen=True)
class RunLayout:
    """The parallel layout and batch shape a checkpoint was written under (kept in its marker)."""

    world_size: int
    dp_size: int
    sp_size: int
    ring_size: int
    ring_type: str
    micro_batch: int
    grad_accum: int
    zero_stage: int

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.dp_size

    def same_sharding(self, other: "RunLayout") -> bool:
        """True when every rank's files and data position carry over one to one."""
        keys = ("world_size", "dp_size", "sp_size", "ring_size", "ring_type", "zero_stage")
        return all(getattr(self, key) == getattr(other, key) for key in keys)

    def describe(self) -> str:
        return (f"{self.world_size} rank(s) = DP {self.dp_size} x SP {self.sp_size} (ring {self.ring_size}), "
                f"global batch {self.micro_batch} x GAS {self.grad_accum} x DP {self.dp_size} = {self.global_batch}"
                f", ZeRO-{self.zero_stage}")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    layout: Optional[RunLayout]  # None: no valid marker
    problem: str = ""  # why it cannot be resumed from (empty when complete)

    @property
    def complete(self) -> bool:
        return self.layout is not None and not self.problem


def staging_name(step: int) -> str:
    return f"{STAGING_PREFIX}step-{step}"


def read_checkpoint(path: Path) -> Checkpoint:
    """Describe one checkpoint folder: complete when its marker is valid and every file it lists is whole."""
    match = _NAME.match(path.name)
    step = int(match.group(2)) if match else -1
    marker = path / MARKER
    if not match or match.group(1) or not marker.is_file():
        return Checkpoint(path, step, None, f"no {MARKER}: its save was cut short, or an older longvila wrote it "
                                            "without a completion marker")
    try:
        info = json.loads(marker.read_text())
        checkpoint = Checkpoint(path, int(info["step"]), RunLayout(**info["layout"]))
        files = dict(info["files"])
    except (ValueError, KeyError, TypeError):
        return Checkpoint(path, step, None, f"its {MARKER} is unreadable")
    for name, size in sorted(files.items()):
        file = path / name
        if not file.is_file():
            return replace(checkpoint, problem=f"{name} is missing")
        if file.stat().st_size != size:
            return replace(checkpoint, problem=f"{name} has {file.stat().st_size} bytes, {size} were written")
    return checkpoint


def list_checkpoints(root: Path) -> list[Checkpoint]:
    """Every checkpoint folder under ``root`` (complete or not), oldest first."""
    if not root.is_dir():
        return []
    found = [read_checkpoint(path) for path in root.iterdir() if path.is_dir() and _NAME.match(path.name)]
    return sorted(found, key=lambda c: (c.step, c.complete))


def latest_complete(root: Path) -> Checkpoint:
    """The newest complete checkpoint; newer incomplete ones are named in a warning and left alone."""
    checkpoints = list_checkpoints(root)
    complete = [c for c in checkpoints if c.complete]
    newest = complete[-1] if complete else None
    skipped = [c for c in checkpoints if not c.complete and (newest is None or c.step >= newest.step)]
    for bad in skipped:
        logger.warning("checkpoint %s is incomplete (%s); skipped and left for inspection", bad.path.name,
                       bad.problem)
    if newest is None:
        raise CheckpointError(f"--resume_from_checkpoint latest: no complete checkpoint under {root} "
                              "(--resume_from_checkpoint auto starts fresh when there is none)")
    return newest


def checkpoint_root(output_dir: str | Path) -> Path:
    """Where a run writing to ``output_dir`` keeps its resumable checkpoints."""
    return Path(output_dir) / CHECKPOINT_DIR


def resolve_resume_request(spec: str | None, root: Path) -> Checkpoint | None:
    """What ``--resume_from_checkpoint`` asks for, decided from the folders alone (so before any weights load).

    ``auto`` is for jobs that a cluster requeues with the same command: the newest complete checkpoint under
    ``root`` if there is one, else a fresh start (``None``), and the log says which. ``latest`` with nothing to
    resume, or a folder that is not a complete checkpoint, is an error; no value means a fresh start."""
    if spec is None:
        return None
    if spec == "auto":
        if not any(c.complete for c in list_checkpoints(root)):
            logger.info("--resume_from_checkpoint auto: no complete checkpoint under %s; starting fresh", root)
            return None
        checkpoint = latest_complete(root)
        logger.info("--resume_from_checkpoint auto: resuming from %s (step %d)", checkpoint.path, checkpoint.step)
        return checkpoint
    return resolve_checkpoint(spec, root)


def resolve_checkpoint(spec: str, root: Path) -> Checkpoint:
    """``latest`` or a folder; a folder must be a complete checkpoint."""
    if spec == "latest":
        return latest_complete(root)
    checkpoint = read_checkpoint(Path(spec))
    if not Path(spec).is_dir():
        raise CheckpointError(f"--resume_from_checkpoint {spec}: no such folder")
    if not checkpoint.complete:
        raise CheckpointError(f"--resume_from_checkpoint {spec}: not a complete checkpoint ({checkpoint.problem})")
    return checkpoint


FULL_DISK_BYTES = 64 * 2**20
"""Below this much free space a failed write is reported as a full disk: torch.save's C++ writer (which DeepSpeed
saves through) raises a RuntimeError without an errno when the disk fills ("unexpected pos ..."), so the cause
has to be read from the disk itself."""


def save_failure_reason(error: BaseException, root: Path) -> Optional[str]:
    """A one-line cause for a failed save, or None when it is not a storage failure (then it is a bug and keeps
    its traceback). An OSError says its own cause; a RuntimeError counts only when the disk is in fact full."""
    try:
        usage = shutil.disk_usage(root)
    except OSError:
        usage = None
    free = f"{usage.free:,} bytes free under {root}" if usage is not None else f"{root} unreadable"
    if isinstance(error, OSError):
        return f"{error.strerror or error} ({error.filename}; {free})"
    if usage is not None and usage.free < FULL_DISK_BYTES and _raised_by_torch_save(error):
        return f"No space left on device ({free}; the writer said: {str(error).splitlines()[0]})"
    return None


def _raised_by_torch_save(error: BaseException) -> bool:
    """Whether ``error`` came out of torch.save's writer (not, say, a collective whose peer died of the full disk)."""
    trace = error.__traceback__
    while trace is not None:
        if Path(trace.tb_frame.f_code.co_filename).match("torch/serialization.py"):
            return True
        trace = trace.tb_next
    return False


def clear_staging(root: Path, step: int) -> None:
    """Remove what a cut-short save of the same step left behind (rank 0, before anyone writes)."""
    shutil.rmtree(root / staging_name(step), ignore_errors=True)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(root: Path, step: int, layout: RunLayout) -> Path:
    """Mark the staged save complete and move it into place (rank 0, after every rank has written)."""
    staged, final = root / staging_name(step), root / f"step-{step}"
    marker = staged / MARKER
    files = {str(f.relative_to(staged)): f.stat().st_size for f in sorted(staged.rglob("*")) if f.is_file()}
    marker.write_text(json.dumps({"step": step, "layout": asdict(layout), "files": files}, indent=2) + "\n")
    _fsync_path(marker)
    if final.exists():  # a save of this step from an earlier attempt: replaced only once the new one is whole
        retired = root / f"{STAGING_PREFIX}retired-step-{step}"
        shutil.rmtree(retired, ignore_errors=True)
        final.rename(retired)
        staged.rename(final)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staged.rename(final)
    _fsync_path(root)
    return final


def prune(root: Path, keep: Optional[int]) -> list[Path]:
    """Drop complete checkpoints beyond the newest ``keep`` and incomplete ones older than the newest complete."""
    checkpoints = list_checkpoints(root)
    complete = [c for c in checkpoints if c.complete]
    if not complete:
        return []
    doomed = [c for c in checkpoints if not c.complete and c.step < complete[-1].step]
    if keep:
        doomed += complete[:-keep]
    for checkpoint in doomed:
        shutil.rmtree(checkpoint.path, ignore_errors=True)
    return [c.path for c in doomed]


def check_writable(output_dir: str) -> None:
    """Create ``output_dir`` and write a probe file there, so an unwritable place fails before any compute."""
    path = Path(output_dir)
    probe = path / f".write-probe-{os.environ.get('RANK', '0')}-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise PermissionError(f"--output_dir {output_dir} cannot be written: {error.strerror or error}") from None


def publish_entries(staged: Path, out: Path, last: str) -> None:
    """Move every entry of ``staged`` into ``out``, replacing what is there, so ``out`` never looks finished early.

    For a model folder that shares ``out`` with logs and checkpoints (the VILA layout under ``output_dir``):
    ``out/<last>`` (``config.json``, what every loader opens first) is removed before anything else moves and
    moved in only after every other entry, so a crash in between leaves a folder no loader takes for a model.
    """
    (out / last).unlink(missing_ok=True)
    for entry in sorted(staged.iterdir(), key=lambda path: path.name == last):
        target = out / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        entry.rename(target)
    staged.rmdir()
    _fsync_path(out)
