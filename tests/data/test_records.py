import json
import logging
import pickle

import pytest

from longvila.data.datasets import ConversationDataset
from longvila.data.packing import PackedTextDataset
from longvila.data.records import read_records


def keep_dicts_with_x(obj):
    if not isinstance(obj, dict) or "x" not in obj:
        raise ValueError("no x")
    return obj["x"]


def test_json_list_items_validated_individually(tmp_path, caplog):
    path = tmp_path / "list.data"  # the extension does not matter: the format is sniffed
    path.write_text("  \n" + json.dumps([{"x": 1}, {"y": 2}, 3, {"x": 4}]))
    with caplog.at_level(logging.WARNING, logger="longvila.data"):
        records, bad = read_records(path, keep_dicts_with_x)
    assert records == [1, 4] and bad == 2
    assert ["item 1" in r.getMessage() for r in caplog.records] == [True, False]


def test_jsonl_with_blank_lines(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{"x": 1}\n\n   \n{"x": 2}\nnot json\n')
    assert read_records(path, keep_dicts_with_x) == ([1, 2], 1)


def test_broken_json_list_is_one_clear_error(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[{"x": 1}, ')
    with pytest.raises(ValueError, match="not valid JSON"):
        read_records(path, keep_dicts_with_x)


def test_datasets_pickle_for_dataloader_workers(tmp_path, tokenizer, image_processor):
    conv = tmp_path / "c.jsonl"
    conv.write_text(json.dumps({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}))
    text = tmp_path / "t.jsonl"
    text.write_text(json.dumps({"text": "hello world"}))
    for ds in (ConversationDataset(conv, tokenizer, image_processor), PackedTextDataset(text, tokenizer, 8)):
        clone = pickle.loads(pickle.dumps(ds))
        assert all((clone[0][k] == ds[0][k]).all() for k in ("input_ids", "labels"))
