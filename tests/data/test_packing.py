import json
import logging

import pytest
import torch

from longvila.constants import IGNORE_INDEX
from longvila.data.packing import PackedTextDataset, pack_documents

WORDS = "the grass is green the sky is blue here we go there and back again".split()


def make_docs(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (n,), generator=g).tolist()) for n in lengths]


def write(path, texts, extra=()):
    with open(path, "w") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
        for line in extra:
            f.write(line + "\n")
    return path


def doc_tokens(tokenizer, texts):
    return [tokenizer.encode(t, add_special_tokens=False) + [tokenizer.eos_token_id] for t in texts]


def real_docs(sample):
    """Split a packed sample into its documents (non-pad), using position_ids restarts."""
    ids, pos, labels = sample["input_ids"].tolist(), sample["position_ids"].tolist(), sample["labels"].tolist()
    docs = []
    for i, p, lab in zip(ids, pos, labels):
        if p == 0:
            docs.append(([], []))
        docs[-1][0].append(i)
        docs[-1][1].append(lab)
    return [d for d, labs in docs if any(lab != IGNORE_INDEX for lab in labs)], docs


@pytest.mark.parametrize("split_documents", [False, True])
def test_packing_restarts_positions_and_loses_nothing(tmp_path, tokenizer, split_documents):
    max_len = 64
    texts = make_docs([3, 10, 2, 60, 1, 8, 4, 6])  # one doc tokenises to well over 64 tokens
    path = write(tmp_path / "t.jsonl", texts)
    ds = PackedTextDataset(path, tokenizer, max_len, split_documents=split_documents)
    expected = doc_tokens(tokenizer, texts)
    assert max(len(d) for d in expected) > max_len and ds.num_documents == len(texts)

    stream, pieces = [], []
    for k in range(len(ds)):
        s = ds[k]
        assert set(s) == {"input_ids", "labels", "position_ids", "media"} and s["media"] == []
        for key in ("input_ids", "labels", "position_ids"):
            assert s[key].shape == (max_len,) and s[key].dtype == torch.long
        real = s["labels"] != IGNORE_INDEX
        assert torch.equal(s["labels"][real], s["input_ids"][real])  # all real tokens supervised
        n_real = int(real.sum())
        assert bool(real[:n_real].all())  # padding only at the end
        assert torch.all(s["input_ids"][n_real:] == ds.pad_id)
        if n_real < max_len:  # the padding is its own run of positions from 0
            assert torch.equal(s["position_ids"][n_real:], torch.arange(max_len - n_real))
        docs, _ = real_docs(s)
        for d in docs:
            pieces.append(d)
            stream.extend(d)
    # nothing lost, order kept
    assert stream == [t for d in expected for t in d]
    # positions restart exactly at document boundaries: every piece is a prefix-aligned slice of one document
    if not split_documents:
        long = [d for d in expected if len(d) > max_len]
        chunks = [d[i:i + max_len] for d in expected for i in range(0, len(d), max_len)]
        assert pieces == chunks and long
    else:
        assert all(int((ds[k]["labels"] == IGNORE_INDEX).sum()) == 0 for k in range(len(ds) - 1))
        # restarts exactly where a document starts or a sequence ends, nowhere else
        cuts, offset = set(), 0
        for d in expected:
            cuts.add(offset)
            offset += len(d)
        cuts |= set(range(0, offset, max_len))
        bounds = sorted(cuts) + [offset]
        flat = [t for d in expected for t in d]
        assert pieces == [flat[a:b] for a, b in zip(bounds, bounds[1:])]
    # the last partial sequence is kept (padded), never dropped
    assert (ds[len(ds) - 1]["labels"] == IGNORE_INDEX).any()


def test_pack_documents_policy():
    docs = [[1] * 3, [2] * 4, [3] * 2, [4] * 9, [5] * 1]
    whole = pack_documents(docs, 5)
    assert whole == [[[1] * 3], [[2] * 4], [[3] * 2], [[4] * 5], [[4] * 4, [5]]]
    dense = pack_documents(docs, 5, split_documents=True)
    assert dense == [[[1] * 3, [2] * 2], [[2] * 2, [3] * 2, [4]], [[4] * 5], [[4] * 3, [5]]]
    assert pack_documents([[1] * 12], 5, split_documents=True) == [[[1] * 5], [[1] * 5], [[1] * 2]]
    assert pack_documents([[7] * 5, [8] * 5], 5) == [[[7] * 5], [[8] * 5]]  # exact fits: no empty sequences
    with pytest.raises(ValueError):
        pack_documents(docs, 0)


def test_position_ids_restart_at_each_document(tmp_path, tokenizer):
    texts = ["a", "bb", "ccc"]
    ds = PackedTextDataset(write(tmp_path / "t.jsonl", texts), tokenizer, 40)
    assert len(ds) == 1
    s = ds[0]
    lens = [len(d) for d in doc_tokens(tokenizer, texts)]
    expected = torch.cat([torch.arange(n) for n in lens + [40 - sum(lens)]])
    assert torch.equal(s["position_ids"], expected)
    starts = (s["position_ids"] == 0).nonzero().flatten().tolist()
    assert starts == [0, lens[0], lens[0] + lens[1], sum(lens)]
    eos = tokenizer.eos_token_id
    assert [s["input_ids"][k - 1].item() for k in starts[1:]] == [eos] * 3


def test_malformed_lines_skipped_and_counted(tmp_path, tokenizer, caplog):
    path = write(tmp_path / "t.jsonl", ["hello world"], extra=['{"text": ', '{"txt": "x"}', '{"text": 5}', "[1]"])
    with caplog.at_level(logging.WARNING, logger="longvila.data"):
        ds = PackedTextDataset(path, tokenizer, 16)
    assert ds.num_malformed == 4 and ds.num_documents == 1
    assert len([r for r in caplog.records if "malformed" in r.getMessage()]) == 4


@pytest.mark.parametrize("content", ["", '{"nope": 1}\n'])
def test_empty_or_all_bad_raises(tmp_path, tokenizer, content):
    path = tmp_path / "t.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=r"t\.jsonl"):
        PackedTextDataset(path, tokenizer, 16)


def test_bad_max_length(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="model_max_length"):
        PackedTextDataset(write(tmp_path / "t.jsonl", ["x"]), tokenizer, 0)
