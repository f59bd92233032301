"""Data mixtures: the spec (--data_path list, --data_mixture YAML) and the weighted, resumable sampling."""

from collections import Counter

import pytest

from longvila.config import parse_stage_args
from longvila.errors import ConfigError
from longvila.data.mixture import MixtureDataset
from longvila.data.mixture_spec import data_sources
from longvila.engine.data_stream import MicroBatchStream
from longvila.errors import DataError


class Source:
    """``n`` samples tagged (name, local index); indices in ``bad`` fail to load; ``num_malformed`` as loaded."""

    def __init__(self, name, n, bad=(), num_malformed=0):
        self.name, self.n, self.bad, self.num_malformed = name, n, set(bad), num_malformed

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return None if index in self.bad else (self.name, index)


def mixture(seed=0, bad_b=(), malformed_b=0):
    sources = {"a": Source("a", 10), "b": Source("b", 7, bad_b, malformed_b), "c": Source("c", 3)}
    return MixtureDataset(sources, {"a": 2, "b": 0.5}, seed=seed)  # c: default weight 1


def collate(samples):
    return list(samples)


def drain(stream, n_batches):
    return [sample for _ in range(n_batches) for sample in stream.next_batch()]


def test_weights_are_passes_per_epoch_and_partial_passes_rotate():
    mix = mixture()
    assert (len(mix), mix.draws, mix.draws_per_epoch) == (20, [20, 4, 3], 27)  # b: round(0.5 * 7) = 4
    stream = MicroBatchStream(mix, collate, batch_size=1, seed=3)
    epochs = [drain(stream, stream.samples_per_epoch) for _ in range(2)]
    for drawn in epochs:
        per_source = Counter(name for name, _ in drawn)
        assert per_source == {"a": 20, "b": 4, "c": 3}
        assert Counter(i for name, i in drawn if name == "a") == dict.fromkeys(range(10), 2)  # every record twice
        assert len({i for name, i in drawn if name == "b"}) == 4  # half a pass: distinct records
    b_seen = [{i for name, i in drawn if name == "b"} for drawn in epochs]
    assert b_seen[0] | b_seen[1] == set(range(7)), "the partial pass must move on to the unseen records"
    assert stream.samples_per_source == {"a": 40, "b": 8, "c": 6}


def test_order_is_deterministic_for_a_seed_and_shared_by_sequence_parallel_ranks():
    runs = [drain(MicroBatchStream(mixture(seed=1), collate, batch_size=3, dp_rank=1, dp_size=2, seed=1), 12)
            for _ in range(2)]  # two SP ranks of DP rank 1: same seed, same rank
    assert runs[0] == runs[1]
    other = drain(MicroBatchStream(mixture(seed=2), collate, batch_size=3, dp_rank=1, dp_size=2, seed=2), 12)
    assert other != runs[0]


@pytest.mark.parametrize("dp_size", [3, 4])
def test_data_parallel_ranks_split_each_epoch_disjoint_and_complete(dp_size):
    mix = mixture()
    streams = [MicroBatchStream(mix, collate, batch_size=1, dp_rank=r, dp_size=dp_size, seed=5) for r in range(dp_size)]
    per_rank = [drain(s, s.samples_per_epoch) for s in streams]
    assert len({len(drawn) for drawn in per_rank}) == 1
    together = Counter(sample for drawn in per_rank for sample in drawn)
    expected = Counter(mix[int(i)] for i in mix.epoch_indices(0))
    padded = -(-mix.draws_per_epoch // dp_size) * dp_size  # the epoch, wrapped to a multiple of the DP size
    assert expected - together == Counter(), "every draw of the epoch goes to a rank"
    assert sum((together - expected).values()) == padded - mix.draws_per_epoch, "and to one rank only (+ the wrap)"


def test_resume_mid_epoch_continues_the_identical_sequence_and_counts():
    def stream():
        return MicroBatchStream(mixture(bad_b={2}, malformed_b=1), collate, batch_size=4, seed=7)

    full = stream()
    expected = drain(full, 20)  # 80 samples: crosses two epoch boundaries
    first = stream()
    got = drain(first, 5)
    state = first.state_dict()
    resumed = stream()
    resumed.load_state_dict(state)
    got += drain(resumed, 15)
    assert got == expected
    assert (resumed.samples_per_source, resumed.skipped_per_source, resumed.num_skipped) == \
        (full.samples_per_source, full.skipped_per_source, full.num_skipped)


def test_skipped_samples_are_counted_per_source_and_not_as_consumed():
    stream = MicroBatchStream(mixture(bad_b={0, 1, 2, 3, 4, 5, 6}, malformed_b=2), collate, batch_size=3, seed=0)
    drawn = drain(stream, 30)
    assert stream.samples_per_source["b"] == 0 and all(name != "b" for name, _ in drawn)
    assert sum(stream.samples_per_source.values()) == len(drawn) == 90
    assert stream.skipped_per_source["b"] >= 2 + 4  # the malformed records + at least one epoch's draws of b
    assert sum(stream.skipped_per_source.values()) == stream.num_skipped
    other_rank = MicroBatchStream(mixture(malformed_b=2), collate, batch_size=1, dp_rank=1, dp_size=2)
    assert other_rank.skipped_per_source == {"a": 0, "b": 0, "c": 0}  # malformed records: rank 0 reports them


def test_resume_with_other_data_is_refused():
    state = MicroBatchStream(mixture(), collate, batch_size=1).state_dict()
    with pytest.raises(DataError, match="sources"):
        MicroBatchStream(Source("x", 5), collate, batch_size=1).load_state_dict(state)
    reweighted = MixtureDataset({"a": Source("a", 10), "b": Source("b", 7), "c": Source("c", 3)}, {"a": 3})
    with pytest.raises(DataError, match="same datasets and weights"):
        MicroBatchStream(reweighted, collate, batch_size=1).load_state_dict(state)


def test_single_dataset_order_is_unchanged_by_mixture_support():
    plain = MicroBatchStream(Source("x", 9), collate, batch_size=1, seed=4)
    mix = MicroBatchStream(MixtureDataset({"x": Source("x", 9)}), collate, batch_size=1, seed=4)
    assert drain(plain, 20) == drain(mix, 20)


# ---------------------------------------------------------------- the spec: --data_path list and --data_mixture


@pytest.fixture
def files(tmp_path):
    for name in ("a.jsonl", "b.json", "sub/c.jsonl", "other/a.jsonl"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}\n")
    (tmp_path / "media").mkdir()
    return tmp_path


def test_data_path_comma_list_and_yaml_resolve_relative_to_the_yaml(files, tmp_path):
    listed = data_sources(f"{files / 'a.jsonl'}, {files / 'b.json'}", None, "/m")
    assert [(s.name, s.path, s.weight, s.media_root) for s in listed] == [
        ("a", files / "a.jsonl", 1.0, "/m"), ("b", files / "b.json", 1.0, "/m")]
    mix = files / "mix.yaml"
    mix.write_text("datasets:\n  - path: a.jsonl\n    weight: 2\n  - {path: sub/c.jsonl, name: cee, weight: 0.25,"
                   " media_root: media}\n")
    sources = data_sources(None, str(mix), "/global")
    assert [(s.name, s.path, s.weight, s.media_root) for s in sources] == [
        ("a", files / "a.jsonl", 2.0, "/global"), ("cee", files / "sub/c.jsonl", 0.25, str(files / "media"))]


@pytest.mark.parametrize("yaml_text, message", [
    ("datasets:\n  - {path: a.jsonl, wieght: 2}\n", "dataset 1 has unknown keys: wieght"),
    ("datasets:\n  - {path: a.jsonl}\n  - {path: missing.jsonl}\n", "dataset 2: file not found: .*missing.jsonl"),
    ("datasets:\n  - {path: a.jsonl, weight: 0}\n", "'weight' must be a number > 0, got 0"),
    ("datasets:\n  - {path: a.jsonl, weight: -1.5}\n", "'weight' must be a number > 0, got -1.5"),
    ("datasets:\n  - {path: a.jsonl, weight: lots}\n", "'weight' must be a number > 0"),
    ("datasets:\n  - {path: a.jsonl}\n  - {path: other/a.jsonl}\n", "two datasets are named 'a'"),
    ("datasets:\n  - {path: a.jsonl, media_root: nowhere}\n", "media_root is not a folder"),
    ("datasets:\n  - {weight: 2}\n", "dataset 1 needs a 'path'"),
    ("datasets: []\n", "'datasets' must be a non-empty list"),
    ("- path: a.jsonl\n", "must be a mapping with exactly one key, 'datasets'"),
    ("datasets:\n  - {path: a.jsonl\n", "is not valid YAML: .*line"),
])
def test_bad_mixture_yaml_is_a_one_line_config_error(files, yaml_text, message):
    mix = files / "mix.yaml"
    mix.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message) as error:
        parse_stage_args("s3_sft", ["--output_dir", str(files / "out"), "--data_mixture", str(mix)])
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("flags, message", [
    (["--data_path", "{a},{b}", "--data_mixture", "{a}"], "--data_path and --data_mixture are exclusive"),
    (["--data_path", "{a},{root}/gone.json"], "--data_path not found: .*gone.json"),
    (["--data_path", "{a},{root}/other/a.jsonl"], "two datasets are named 'a'"),
    (["--data_path", "{a},"], "--data_path has an empty entry"),
    (["--data_mixture", "{root}/none.yaml"], "--data_mixture .*none.yaml: file not found"),
])
def test_bad_data_flags_are_one_line_config_errors(files, flags, message):
    flags = [f.format(a=files / "a.jsonl", b=files / "b.json", root=files) for f in flags]
    with pytest.raises(ConfigError, match=message) as error:
        parse_stage_args("s3_sft", ["--output_dir", str(files / "out"), *flags])
    assert "\n" not in str(error.value)
