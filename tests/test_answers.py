"""Kept answers (whichmodel.core.answers): an answer comes back only while its request, its
inputs (files and folders, by size and mtime) and its outputs are all unchanged."""

import os
import time
from pathlib import Path

import pytest

from whichmodel.core import answers

HOUR_AGO = time.time_ns() - 3600 * 10**9


def old_file(path: Path, content: bytes) -> Path:
    """A file last changed an hour ago (outside the racy window of a snapshot)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    os.utime(path, ns=(HOUR_AGO, HOUR_AGO))
    return path


@pytest.fixture
def kept(tmp_path):
    """A work directory holding an answer computed from a data folder and a weights file."""
    data = tmp_path / "data"
    old_file(data / "cat" / "1.png", b"cat-one")
    old_file(data / "dog" / "1.png", b"dog-one")
    weights = old_file(tmp_path / "w.safetensors", b"weights-v1")
    work = tmp_path / "work"
    old_file(work / "report" / "summary.txt", b"picks")
    request = {"command": "search", "budget": 2}
    snap = answers.Snapshot(request)
    snap.add([data, weights])
    assert not snap.racy
    answers.record(work, snap, ["report"], "the answer\n")
    return data, weights, work, request


def test_an_unchanged_request_gets_its_answer_back(kept):
    _, _, work, request = kept
    assert answers.recall(work, request)[0] == "the answer\n"
    assert answers.recall(work, {**request, "budget": 3}) is None  # another request


def test_a_file_rewritten_to_the_same_size_is_a_miss(kept):
    data, weights, work, request = kept
    weights.write_bytes(b"weights-v2")  # same size, new content, mtime now
    assert answers.recall(work, request) is None


def test_a_touched_added_or_removed_data_file_is_a_miss(kept):
    data, _, work, request = kept
    image = data / "cat" / "1.png"
    os.utime(image, ns=(HOUR_AGO + 1, HOUR_AGO + 1))  # same bytes, touched
    assert answers.recall(work, request) is None
    os.utime(image, ns=(HOUR_AGO, HOUR_AGO))
    assert answers.recall(work, request) is not None  # back as it was: the same state
    old_file(data / "cat" / "2.png", b"new")
    assert answers.recall(work, request) is None
    (data / "cat" / "2.png").unlink()
    (data / "dog" / "1.png").unlink()
    assert answers.recall(work, request) is None


def test_a_changed_or_missing_output_is_a_miss(kept):
    _, _, work, request = kept
    (work / "report" / "summary.txt").write_text("edited")
    assert answers.recall(work, request) is None
    (work / "report" / "summary.txt").unlink()
    assert answers.recall(work, request) is None


def test_a_new_code_version_is_a_miss(kept, monkeypatch):
    _, _, work, request = kept
    monkeypatch.setattr(answers, "code_version", lambda: "another version")
    assert answers.recall(work, request) is None


def test_no_answer_is_kept_from_inputs_changed_within_the_racy_window(tmp_path):
    """A file changed just before the snapshot could be rewritten again within the same
    timestamp step unseen: no answer is kept for it."""
    data = tmp_path / "data.parquet"
    data.write_bytes(b"fresh")
    snap = answers.Snapshot({"command": "search"})
    snap.add([data])
    assert snap.racy
    (tmp_path / "out.txt").write_text("x")
    answers.record(tmp_path, snap, ["out.txt"], "answer")
    assert answers.recall(tmp_path, {"command": "search"}) is None


def test_a_damaged_record_is_a_miss(kept):
    _, _, work, request = kept
    (work / answers.RECORD).write_text("{not json")
    assert answers.recall(work, request) is None
