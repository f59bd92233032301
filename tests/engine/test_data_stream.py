import pytest

from longvila.engine.data_stream import MicroBatchStream
from longvila.errors import DataError


class FlakyDataset:
    """Every index in ``bad`` fails to load (returns None), like a corrupt video."""

    def __init__(self, n, bad=()):
        self.n, self.bad = n, set(bad)

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return None if index in self.bad else index


def collate(samples):
    return {"ids": list(samples)}


def test_skips_and_counts_bad_samples_without_short_batches():
    stream = MicroBatchStream(FlakyDataset(10, bad={1, 4, 7}), collate, batch_size=3, seed=1)
    seen = [i for _ in range(5) for i in stream.next_batch()["ids"]]
    assert all(len(stream.next_batch()["ids"]) == 3 for _ in range(3))
    assert not {1, 4, 7} & set(seen)
    assert stream.num_skipped >= 3


def test_all_bad_dataset_raises_one_clear_error():
    stream = MicroBatchStream(FlakyDataset(6, bad=range(6)), collate, batch_size=2, name="videos.jsonl")
    with pytest.raises(DataError, match="every sample of videos.jsonl failed"):
        stream.next_batch()


def test_resume_continues_with_identical_batches():
    full = MicroBatchStream(FlakyDataset(7, bad={3}), collate, batch_size=2, seed=5)
    expected = [full.next_batch()["ids"] for _ in range(9)]  # crosses epoch boundaries
    first = MicroBatchStream(FlakyDataset(7, bad={3}), collate, batch_size=2, seed=5)
    got = [first.next_batch()["ids"] for _ in range(4)]
    resumed = MicroBatchStream(FlakyDataset(7, bad={3}), collate, batch_size=2, seed=5)
    resumed.load_state_dict(first.state_dict())
    got += [resumed.next_batch()["ids"] for _ in range(5)]
    assert got == expected
    assert resumed.num_skipped == full.num_skipped


def test_data_parallel_ranks_partition_each_epoch():
    streams = [MicroBatchStream(FlakyDataset(9), collate, batch_size=1, dp_rank=r, dp_size=2, seed=0) for r in (0, 1)]
    per_rank = [[s.next_batch()["ids"][0] for _ in range(s.samples_per_epoch)] for s in streams]
    assert len(per_rank[0]) == len(per_rank[1]) == 5
    assert set(per_rank[0]) | set(per_rank[1]) == set(range(9))


def drain(streams, steps):
    """Indices drawn by every rank over ``steps`` batches (DP ranks in order)."""
    return [i for _ in range(steps) for stream in streams for i in stream.next_batch()["ids"]]


@pytest.mark.parametrize("old_dp, new_dp", [(2, 1), (1, 3), (3, 2), (2, 4)])
def test_resharded_streams_continue_the_epoch_without_repeats_or_gaps(old_dp, new_dp):
    from longvila.engine.data_stream import merge_stream_states

    old = [MicroBatchStream(FlakyDataset(24), collate, batch_size=1, dp_rank=r, dp_size=old_dp, seed=3)
           for r in range(old_dp)]
    seen = drain(old, 2)
    states = [stream.state_dict() for stream in old]
    new = [MicroBatchStream(FlakyDataset(24), collate, batch_size=1, dp_rank=r, dp_size=new_dp, seed=3)
           for r in range(new_dp)]
    for rank, stream in enumerate(new):
        stream.load_state_dict(merge_stream_states(states, rank))
    remaining = 24 - len(seen)
    seen += drain(new, -(-remaining // new_dp))
    assert sorted(set(seen)) == list(range(24))  # every sample of the epoch, none skipped
    assert len(seen) - 24 == -remaining % new_dp  # repeats only where the last round is padded for DP
    assert all(stream.epoch == 0 for stream in new)


def test_resharding_carries_skip_counts_once_and_never_repeats_a_good_sample():
    from longvila.engine.data_stream import merge_stream_states

    dataset = FlakyDataset(24, bad={2, 9, 17})
    old = [MicroBatchStream(dataset, collate, batch_size=1, dp_rank=r, dp_size=3, seed=1) for r in range(3)]
    seen = drain(old, 4)
    single = MicroBatchStream(dataset, collate, batch_size=1, seed=1)
    single.load_state_dict(merge_stream_states([stream.state_dict() for stream in old], 0))
    seen += drain([single], 21 - len(seen))
    assert sorted(seen) == sorted(set(range(24)) - {2, 9, 17}) and single.epoch == 0
    assert single.num_skipped == 3
    assert merge_stream_states([stream.state_dict() for stream in old], 1)["num_skipped"] == 0


def test_merging_ranks_in_different_epochs_is_refused():
    from longvila.engine.data_stream import merge_stream_states

    streams = [MicroBatchStream(FlakyDataset(4), collate, batch_size=1, dp_rank=r, dp_size=2) for r in (0, 1)]
    drain(streams[:1], 3)  # rank 0 alone runs into the next epoch
    with pytest.raises(DataError, match="different epochs"):
        merge_stream_states([s.state_dict() for s in streams], 0)
