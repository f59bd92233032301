"""Atomic checkpoint folders: what counts as complete, which one ``latest`` picks, what pruning may delete."""

import json
import logging

import pytest

from longvila.engine import checkpoint_store as store

LAYOUT = store.RunLayout(world_size=2, dp_size=1, sp_size=2, ring_size=1, ring_type="zigzag_ring",
                         micro_batch=1, grad_accum=2, zero_stage=2)


def staged_save(root, step, publish=True):
    """What the trainer does: every rank writes into the staging folder, rank 0 publishes."""
    staged = root / store.staging_name(step)
    staged.mkdir(parents=True)
    (staged / "weights.pt").write_text(f"step {step}")
    return store.publish(root, step, LAYOUT) if publish else staged


def test_publish_makes_a_complete_folder_with_its_layout(tmp_path):
    path = staged_save(tmp_path, 4)
    assert path.name == "step-4" and not (tmp_path / ".tmp-step-4").exists()
    checkpoint = store.read_checkpoint(path)
    assert checkpoint.complete and checkpoint.step == 4 and checkpoint.layout == LAYOUT
    assert json.loads((path / store.MARKER).read_text())["layout"]["grad_accum"] == 2


def test_latest_skips_incomplete_saves_with_a_warning_and_leaves_them(tmp_path, caplog):
    staged_save(tmp_path, 2)
    staged_save(tmp_path, 4, publish=False)  # killed mid-save
    (tmp_path / "step-6").mkdir()  # a folder without its marker (copied by hand, half-written)
    with caplog.at_level(logging.WARNING, logger="longvila"):
        assert store.latest_complete(tmp_path).path == tmp_path / "step-2"
    warned = " ".join(record.getMessage() for record in caplog.records)
    assert ".tmp-step-4 is incomplete" in warned and "step-6 is incomplete" in warned
    assert (tmp_path / ".tmp-step-4").is_dir() and (tmp_path / "step-6").is_dir()


def test_latest_without_any_complete_checkpoint_is_one_line(tmp_path):
    staged_save(tmp_path, 2, publish=False)
    with pytest.raises(store.CheckpointError, match="no complete checkpoint under"):
        store.latest_complete(tmp_path)


def test_an_explicit_incomplete_folder_is_refused(tmp_path):
    staged = staged_save(tmp_path, 2, publish=False)
    with pytest.raises(store.CheckpointError, match="not a complete checkpoint"):
        store.resolve_checkpoint(str(staged), tmp_path)
    with pytest.raises(store.CheckpointError, match="no such folder"):
        store.resolve_checkpoint(str(tmp_path / "step-9"), tmp_path)


def test_a_corrupt_marker_means_incomplete(tmp_path):
    path = staged_save(tmp_path, 2)
    (path / store.MARKER).write_text("{truncated")
    assert not store.read_checkpoint(path).complete


def test_prune_keeps_the_newest_complete_and_newer_incomplete(tmp_path):
    for step in (2, 4):
        staged_save(tmp_path, step)
    staged_save(tmp_path, 3, publish=False)  # superseded by step-4: may go
    staged_save(tmp_path, 6, publish=False)  # newer than every complete one: kept for inspection
    removed = store.prune(tmp_path, keep=1)
    assert sorted(p.name for p in removed) == [".tmp-step-3", "step-2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-step-6", "step-4"]


def test_republishing_a_step_replaces_it_whole(tmp_path):
    staged_save(tmp_path, 2)
    staged = staged_save(tmp_path, 2, publish=False)
    (staged / "weights.pt").write_text("second attempt")
    store.publish(tmp_path, 2, LAYOUT)
    assert (tmp_path / "step-2" / "weights.pt").read_text() == "second attempt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-2"]


def test_publish_entries_moves_config_last_and_replaces_old_parts(tmp_path):
    out, staged = tmp_path / "out", tmp_path / "out" / ".tmp-final"
    (out / "llm").mkdir(parents=True)
    (out / "llm" / "old.bin").write_text("old")
    (out / "config.json").write_text("old")
    (out / "metrics.jsonl").write_text("kept")
    (staged / "llm").mkdir(parents=True)
    (staged / "llm" / "new.bin").write_text("new")
    (staged / "config.json").write_text("new")
    store.publish_entries(staged, out, last="config.json")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "llm", "metrics.jsonl"]
    assert [p.name for p in (out / "llm").iterdir()] == ["new.bin"]
    assert (out / "config.json").read_text() == "new"


def test_output_dir_that_cannot_be_written_is_reported(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(PermissionError, match="cannot be written"):
        store.check_writable(str(blocker / "out"))
    store.check_writable(str(tmp_path / "fresh" / "out"))
    assert list((tmp_path / "fresh" / "out").iterdir()) == []


def test_a_checkpoint_that_lost_or_truncated_a_file_is_skipped_by_latest(tmp_path, caplog):
    """A rank's shard deleted or cut short after the save (disk trouble, a careless cleanup): ``latest`` falls
    back to the previous checkpoint and says which file is wrong, instead of a FileNotFoundError on one rank."""
    staged_save(tmp_path, 2)
    path = staged_save(tmp_path, 4)
    with caplog.at_level(logging.WARNING, logger="longvila"):
        (path / "weights.pt").write_text("step")
        assert store.latest_complete(tmp_path).step == 2
        (path / "weights.pt").unlink()
        assert store.latest_complete(tmp_path).step == 2
    warned = " ".join(record.getMessage() for record in caplog.records)
    assert "weights.pt has 4 bytes, 6 were written" in warned and "weights.pt is missing" in warned
    with pytest.raises(store.CheckpointError, match="weights.pt is missing"):
        store.resolve_checkpoint(str(path), tmp_path)
