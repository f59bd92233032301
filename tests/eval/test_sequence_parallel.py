"""The SP evaluation path scores exactly like one process: SP=1 (DP=2) and SP=2 on real gloo ranks, and torchrun."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from longvila.engine.dist import RENDEZVOUS_VARIABLES
from tests.distributed.world import World

from . import sp_worker


def assert_same_scores(reference: list, other: list) -> None:
    assert [cell[:2] for cell in other] == [cell[:2] for cell in reference]
    for ref_cell, cell in zip(reference, other):
        for (ref_pred, ref_ok, ref_nll), (pred, ok, nll) in zip(ref_cell[2], cell[2], strict=True):
            assert (pred, ok) == (ref_pred, ref_ok), (ref_cell[:2], ref_pred, pred)
            assert nll == pytest.approx(ref_nll, rel=1e-4, abs=1e-4)


@pytest.fixture(scope="module")
def world2(tiny_path):
    with pytest.MonkeyPatch.context() as patch:  # ranks must not inherit an in-process rendezvous
        for name in RENDEZVOUS_VARIABLES:
            patch.delenv(name, raising=False)
        world = World(2, timeout=180)
        world.run(_noop)  # start the ranks while the environment is clean
    yield world
    world.close()


def _noop(rank, world_size):
    return rank


def test_vniah_and_passkey_scores_match_across_sp_and_dp(world2, tmp_path, needle_file):
    single = sp_worker.vniah_scores(0, 1, str(tmp_path / "single"), str(needle_file), 1)
    assert sum(len(cell[2]) for cell in single) == 3 * 3 * 2
    for sp in (1, 2):  # SP=1: two data-parallel ranks split the cells; SP=2: every sequence is sharded
        per_rank = world2.run(sp_worker.vniah_scores, str(tmp_path / f"sp{sp}"), str(needle_file), sp)
        for scores in per_rank:  # every rank ends with all cells
            assert_same_scores(single, scores)
    assert (tmp_path / "sp2" / "vniah_results.json").is_file() and (tmp_path / "sp2" / "vniah_heatmap.png").is_file()

    single = sp_worker.vniah_scores(0, 1, str(tmp_path / "gen-single"), str(needle_file), 1, "generate")
    for scores in world2.run(sp_worker.vniah_scores, str(tmp_path / "gen-sp2"), str(needle_file), 2, "generate"):
        assert_same_scores(single, scores)  # greedy generation, every step sharded

    single = sp_worker.passkey_scores(0, 1, str(tmp_path / "pk-single"), 1)
    for scores in world2.run(sp_worker.passkey_scores, str(tmp_path / "pk-sp2"), 2):
        assert_same_scores(single, scores)


def test_torchrun_module_with_sequence_parallelism(tmp_path, needle_file, subprocess_env, tiny_path):
    """``torchrun -m longvila.eval.vniah --seq_parallel_size 2`` equals the in-process single-rank scores."""
    flags = ["--needles", str(needle_file), "--min_frames", "6", "--max_frames", "6", "--depth_step", "100",
             "--disable_tqdm"]
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "longvila.eval.vniah", "--output_dir", str(tmp_path / "tr"), "--seq_parallel_size", "2", *flags],
        capture_output=True, text=True, timeout=240, env=subprocess_env)
    assert result.returncode == 0, result.stderr[-3000:]
    from longvila.eval import vniah

    vniah.main(["--output_dir", str(tmp_path / "one"), *flags])
    runs = [json.loads((tmp_path / name / "vniah_results.json").read_text()) for name in ("tr", "one")]
    assert runs[0]["config"]["seq_parallel_size"] == 2 and runs[1]["config"]["seq_parallel_size"] == 1
    assert_same_scores(sp_worker.summary(runs[1], "frames"), sp_worker.summary(runs[0], "frames"))
