"""Atomic writes of privzoo's own outputs (models.io) and the hardened scripts/convert_checkpoint.py."""

import sys

import pytest
import torch
from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import convert_checkpoint  # noqa: E402
import demo  # noqa: E402

from models.io import atomic_dir, atomic_open, atomic_write_bytes, atomic_write_text  # noqa: E402


def test_atomic_write_replaces_whole_files_or_nothing(tmp_path):
    path = tmp_path / "sub" / "out.json"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_open(path, "w") as f:
            f.write("half of the new cont")
            raise RuntimeError("disk full")
    assert path.read_text() == "old" and sorted(p.name for p in path.parent.iterdir()) == ["out.json"]
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and len(list(path.parent.iterdir())) == 1


def test_atomic_dir_moves_files_in_only_on_success(tmp_path):
    target = tmp_path / "folder"
    with pytest.raises(ValueError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("a")
            raise ValueError("check failed")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("a")
    (target / "keep.txt").write_text("kept")
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("b")
    assert (target / "a.txt").read_text() == "b" and (target / "keep.txt").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


def test_demo_only_runs_have_their_own_results_files():
    assert demo.results_stem(None) == "results"
    assert demo.results_stem(["b", "a", "b"]) == "results-a+b"
    assert demo.results_stem(["a"]) != demo.results_stem(["b"])


@pytest.fixture
def cli_checkpoint(cli_run):
    """``last.ckpt`` of the shared real CLI run (conftest.cli_run)."""
    return cli_run / "checkpoints" / "last.ckpt"


def test_convert_reads_a_real_cli_checkpoint_without_unpickling(cli_checkpoint, tmp_path):
    # the CLI's checkpoint (with LastCheckpoint's random states) loads with weights_only=True alone
    out = tmp_path / "clf"
    assert convert_checkpoint.main([str(cli_checkpoint), str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    assert ".tmp" not in (out / "README.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf"]  # no temporary folder left
    with pytest.raises(SystemExit):
        convert_checkpoint.main([str(cli_checkpoint), str(tmp_path / "x"), "--trust-pickle"])


def test_convert_refuses_pickled_objects_and_names_a_truncated_file(cli_checkpoint, tmp_path, capsys):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(cli_checkpoint.read_bytes()[:4000])
    assert convert_checkpoint.main([str(truncated), str(tmp_path / "t")]) == 1
    assert f"{truncated} is not a readable PyTorch checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
    pickled = tmp_path / "pickled.ckpt"
    state = torch.load(cli_checkpoint, weights_only=True)
    state["extra"] = demo.results_stem  # a Python object that weights_only refuses
    torch.save(state, pickled)
    with pytest.raises(convert_checkpoint.ConversionError, match="does not unpickle checkpoints"):
        convert_checkpoint.convert(pickled, tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_a_failed_round_trip_leaves_no_folder(cli_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "equal", lambda a, b: False)
    with pytest.raises(convert_checkpoint.ConversionError, match="round trip changed"):
        convert_checkpoint.convert(cli_checkpoint, tmp_path / "bad")
    assert list(tmp_path.iterdir()) == []
