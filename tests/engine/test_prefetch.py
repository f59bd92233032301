"""Loading ahead changes nothing the trainer can see: the same batches, positions, counts and sample logs as the
synchronous stream, an exact resume, and a sample that fails on one SP rank skipped once on all of them."""

import os
import tempfile
import time

import pytest
import torch.multiprocessing as mp

from longvila.engine.data_stream import MicroBatchStream
from longvila.errors import DataError
from longvila.engine.prefetch import PrefetchingStream, failed_rows_agreement


class FlakyDataset:
    """``bad`` indices fail to open (None); ``fails_late`` open but fail to decode in the collator."""

    def __init__(self, n, bad=(), fails_late=()):
        self.n, self.bad, self.fails_late = n, set(bad), set(fails_late)

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return None if index in self.bad else index


def slow_collate(samples, fails_late=frozenset()):
    time.sleep(0.002)  # long enough for the producer to run ahead
    return {"ids": list(samples), "media_failed": [r for r, s in enumerate(samples) if s in fails_late]}


def make(dataset, workers, batch_size=3, agree=None, seed=1):
    stream = MicroBatchStream(dataset, lambda s: slow_collate(s, dataset.fails_late), batch_size=batch_size,
                              seed=seed)
    return PrefetchingStream(stream, workers, agree)


def trace(stream, batches):
    out = []
    for _ in range(batches):
        ids = stream.next_batch()["ids"]
        out.append((ids, stream.state_dict(), stream.num_skipped, stream.epoch, stream.take_step_log()))
    return out


@pytest.mark.parametrize("workers", [1, 3])
def test_loading_ahead_is_invisible(workers):
    want = trace(make(FlakyDataset(10, bad={1, 4, 7}), 0), 12)  # crosses epochs
    stream = make(FlakyDataset(10, bad={1, 4, 7}), workers)
    assert trace(stream, 12) == want
    stream.close()


def test_resume_from_a_state_taken_while_loading_ahead():
    full = trace(make(FlakyDataset(11, bad={2}), 0), 9)
    first = make(FlakyDataset(11, bad={2}), 2)
    trace(first, 4)
    state = first.state_dict()
    first.close()
    resumed = make(FlakyDataset(11, bad={2}), 2)
    resumed.load_state_dict(state)
    assert [t[0] for t in trace(resumed, 5)] == [t[0] for t in full[4:]]
    resumed.close()


@pytest.mark.parametrize("workers", [0, 2])
def test_a_sample_failing_late_is_skipped_once_and_the_batch_reloaded(workers):
    """Index 5 opens but fails to decode: its batch is loaded again without it, exactly as if it had been bad
    from the start, and it is counted once."""
    want = trace(make(FlakyDataset(10, bad={5}), 0), 7)
    got = trace(make(FlakyDataset(10, fails_late={5}), workers), 7)
    assert [t[0] for t in got] == [t[0] for t in want]
    assert [t[2] for t in got] == [t[2] for t in want] == [1, 1, 1, 1, 2, 2, 2]  # once per epoch drawn
    assert [t[4] for t in got] == [t[4] for t in want]


def test_another_ranks_failure_skips_the_sample_here_too():
    """This rank decodes index 3 fine; ``agree`` says another rank did not."""
    dataset = FlakyDataset(8)
    agree = lambda failed: sorted(set(failed) | ({0} if seen and seen[-1] == 3 else set()))  # noqa: E731
    seen = []
    stream = MicroBatchStream(dataset, lambda s: seen.extend(s) or {"ids": list(s), "media_failed": []},
                              batch_size=1, seed=0)
    got = [PrefetchingStream(stream, 0, agree).next_batch()["ids"][0] for _ in range(7)]
    assert 3 not in got and stream.num_skipped == 1


def test_errors_reach_the_training_thread():
    stream = make(FlakyDataset(4, bad=range(4)), 2)
    with pytest.raises(DataError, match="every sample"):
        stream.next_batch()


def _agree_worker(rank, world, path, out):
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    agree = failed_rows_agreement(None, torch.device("cpu"), 3)
    out[rank] = (agree([2] if rank == 1 else []), agree([]))
    dist.destroy_process_group()


def test_failed_rows_agreement_on_real_gloo_ranks():
    with tempfile.TemporaryDirectory() as tmp, mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_agree_worker, args=(2, os.path.join(tmp, "store"), out), nprocs=2)
        assert dict(out) == {0: ([2], []), 1: ([2], [])}
