import pytest

from longvila.engine.data_stream import DataError, MicroBatchStream


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
