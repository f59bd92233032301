"""Kill drills: real SIGKILLs (and a full disk) at the worst moments, then ``--resume_from_checkpoint latest``.

Each stage runs one chain of faults on 2 gloo ranks under torchrun (fp32, CPU), every launch resuming from what
the previous one left, and the final weights must be bit-identical to an uninterrupted run's:

1. killed half-way through step 3 (gradients accumulated, nothing stepped);
2. rank 1 killed while saving step 4, after DeepSpeed wrote its files: ``.tmp-step-4`` stays incomplete and
   ``latest`` falls back to step-2 with a warning;
3. an injected ``OSError(ENOSPC)`` on rank 1 while saving step 4, raised in Python after DeepSpeed's files are
   written: one line on stderr, step-2 still usable (``test_disk_really_fills_during_deepspeeds_own_write`` fills
   a real, size-limited disk inside DeepSpeed's own write instead);
4. killed right after step 6 was saved;
5. resumed from step-6 to the end.
"""

import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from longvila.engine.checkpoint_store import list_checkpoints
from longvila.engine.metrics import read_metrics

STEPS, SAVE_EVERY = 8, 2
LAYOUTS = {"s4_context_ext": ["--per_device_train_batch_size", "1"],  # DP 2
           "s5_long_video_sft": ["--seq_parallel_size", "2", "--seq_parallel_ring_size", "2"]}  # MM-SP zigzag 2


def command(stage, flags, resume=True) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", f"longvila.stages.{stage}", *flags, *(["--resume_from_checkpoint", "latest"] if resume else [])]


def launch(stage, flags, env, fault=None, resume=True) -> subprocess.CompletedProcess:
    env = dict(env, **({"LONGVILA_FAULT": fault} if fault else {}))
    return subprocess.run(command(stage, flags, resume), capture_output=True, text=True, timeout=600, env=env)


@contextmanager
def in_background(stage, flags, env, log: Path):
    """A launch that runs beside the test's other launches (output to ``log``, so no pipe can fill); yields a
    function that waits for it and returns ``(returncode, log text)``. Killed if the test fails first."""
    with open(log, "w") as out:
        process = subprocess.Popen(command(stage, flags, resume=False), stdout=out, stderr=subprocess.STDOUT,
                                   text=True, env=env)
        try:
            yield lambda: (process.wait(timeout=600), log.read_text())
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    weights = {}
    for path in sorted(output_dir.glob("*/*.safetensors")):
        weights.update({f"{path.parent.name}/{k}": v for k, v in load_file(path).items()})
    assert weights, f"no saved model in {output_dir}"
    return weights


def complete_steps(output_dir: Path) -> list[int]:
    return [c.step for c in list_checkpoints(output_dir / "checkpoints") if c.complete]


def longvila_lines(result, stage) -> list[str]:
    """Our one-line errors (torchrun adds its own failure report, which starts with the module name)."""
    return [line for line in result.stderr.splitlines() if line.startswith(f"longvila {stage}:")]


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(LAYOUTS))
def test_kill_chain_resumes_to_bit_identical_weights(stage, stage_flags, subprocess_env, tmp_path):
    def flags(name):
        return stage_flags(stage, tmp_path / name, "--max_steps", str(STEPS), "--save_steps", str(SAVE_EVERY),
                           "--learning_rate", "1e-3", *LAYOUTS[stage])

    out = tmp_path / "drill"
    # The uninterrupted reference runs beside the first drill launch (its own output folder and rendezvous port).
    with in_background(stage, flags("reference"), subprocess_env, tmp_path / "reference.log") as reference:
        killed = launch(stage, flags("drill"), subprocess_env, fault="mid_step:3", resume=False)
        assert killed.returncode != 0 and complete_steps(out) == [2], killed.stderr[-3000:]
        returncode, log = reference()
        assert returncode == 0, log[-3000:]

    killed = launch(stage, flags("drill"), subprocess_env, fault="mid_save:4:1")
    assert killed.returncode != 0 and complete_steps(out) == [2], killed.stderr[-3000:]
    assert (out / "checkpoints" / ".tmp-step-4").is_dir()

    full_disk = launch(stage, flags("drill"), subprocess_env, fault="enospc:4:1")
    assert full_disk.returncode != 0 and complete_steps(out) == [2], full_disk.stderr[-3000:]
    assert ".tmp-step-4 is incomplete" in full_disk.stderr  # the cut-short save was skipped, with a warning
    lines = longvila_lines(full_disk, stage)
    assert len(lines) == 1 and "No space left on device" in lines[0] and "(step-2) is intact" in lines[0], lines

    killed = launch(stage, flags("drill"), subprocess_env, fault="after_save:6")
    assert killed.returncode != 0 and complete_steps(out) == [4, 6], killed.stderr[-3000:]

    finished = launch(stage, flags("drill"), subprocess_env)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert not longvila_lines(finished, stage)
    expected, got = final_weights(tmp_path / "reference"), final_weights(out)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    assert [r["step"] for r in read_metrics(out)] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in read_metrics(out)] == [r["loss"] for r in read_metrics(tmp_path / "reference")]


@contextmanager
def size_limited_disk(path: Path, size_bytes: int):
    """A tmpfs of ``size_bytes`` mounted at ``path`` (root with CAP_SYS_ADMIN); skips the test where it cannot be
    mounted. Yields a function that grows it (``mount -o remount``), as an operator freeing space would."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here ({mounted.stderr.strip() or 'mount failed'}): "
                    "the real full-disk drill needs root with CAP_SYS_ADMIN")

    def grow(new_size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={new_size}", str(path)], check=True)

    try:
        yield grow
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.mark.slow
def test_disk_really_fills_during_deepspeeds_own_write(stage_flags, subprocess_env, tmp_path):
    """Not an injected OSError: the output folder is a tmpfs with room for one checkpoint and a half, so the save of
    step 4 runs out of space inside DeepSpeed's own torch.save. The run must stop in one line, keep step-2 as the
    complete checkpoint, and once the disk is grown, resume to the uninterrupted run's losses and weights."""
    stage, steps = "s4_context_ext", 6

    def flags(out):
        return stage_flags(stage, out, "--max_steps", str(steps), "--save_steps", str(SAVE_EVERY),
                           "--learning_rate", "1e-3", *LAYOUTS[stage])

    reference = launch(stage, flags(tmp_path / "reference"), subprocess_env, resume=False)
    assert reference.returncode == 0, reference.stderr[-3000:]
    one_checkpoint = folder_bytes(tmp_path / "reference" / "checkpoints" / f"step-{steps}")
    disk = tmp_path / "disk"
    with size_limited_disk(disk, int(one_checkpoint * 1.5)) as grow:
        out = disk / "drill"
        full = launch(stage, flags(out), subprocess_env, resume=False)
        assert full.returncode != 0 and complete_steps(out) == [2], full.stderr[-3000:]
        lines = longvila_lines(full, stage)  # one line from each rank whose own write met the full disk
        assert 1 <= len(lines) <= 2, full.stderr[-3000:]
        assert all("No space left on device (0 bytes free" in line and "(step-2) is intact" in line
                   for line in lines), lines
        grow(one_checkpoint * 20)
        finished = launch(stage, flags(out), subprocess_env)
        assert finished.returncode == 0, finished.stderr[-3000:]
        assert [r["loss"] for r in read_metrics(out)] == [r["loss"] for r in read_metrics(tmp_path / "reference")]
        expected, got = final_weights(tmp_path / "reference"), final_weights(out)
        assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
