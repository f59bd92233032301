"""The memory features leave training unchanged: per-step losses and grad norms equal the plain path's.

fp32 on CPU, 10 steps of stage 4 with gradient checkpointing, on 2 real gloo ranks: SP=1 (2 data-parallel
ranks), Ulysses 2 and zigzag ring 2; on Ulysses 2 also with LoRA and under ZeRO-3. The plain path is the naive
full-logits loss with untiled MLPs; the tiled runs use 64-token tiles so 150-token shards split unevenly.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from longvila.engine.dist import child_environment
from longvila.engine.metrics import read_metrics

WORKER = Path(__file__).with_name("memory_equivalence_worker.py")
STEPS = 10
sys.path.insert(0, str(WORKER.parent))
from memory_equivalence_worker import runs as planned_runs  # noqa: E402


@pytest.fixture(scope="module")
def runs(stage_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("memory-runs")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
               str(root), str(stage_data["long_text"]), str(STEPS)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=child_environment())
    assert result.returncode == 0, result.stderr[-4000:]
    return root


@pytest.mark.slow
@pytest.mark.parametrize("layout, variant, reference",
                         [(lay, var, ref) for lay, var, (ref, _) in planned_runs() if ref is not None])
def test_variant_matches_plain_path(runs, layout, variant, reference):
    plain = read_metrics(runs / layout / reference)
    other = read_metrics(runs / layout / variant)
    assert len(plain) == len(other) == STEPS
    assert [r["num_tokens"] for r in other] == [r["num_tokens"] for r in plain]
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in other] == pytest.approx([r[key] for r in plain], rel=1e-5), key
