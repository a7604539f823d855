"""Faults found by the robustness audit (issue 13): each one a named error, and nothing hidden.

A damaged step is listed as damaged, never hides the other entries; a folder where a step's
JSON belongs, a renamed or copied step, an empty or invalid name and a registry that cannot be
written are `ZooError`s with one clear line; a text file or a pickle that is not only tensors is
refused without a word of torch's advice to allow code execution.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from test_hub import edit_step, save_lenet

from zoo import hub
from zoo.cli import main
from zoo.errors import AlreadyExistsError, InvalidValueError, NotAFolderError, NotWritableError


def step_dir(registry, step, name="lenet5-mnist"):
    return registry / name / f"step_{step}"


@pytest.fixture
def registry(tmp_path):
    """'lenet5-mnist' steps 1 and 2, and a second name 'other' step 5."""
    for step in (1, 2):
        save_lenet(tmp_path, step=step)
    save_lenet(tmp_path, name="other", step=5)
    return tmp_path


def loop_link(path):
    path.unlink()
    os.symlink(path.name, path)  # Points at itself: any read fails with ELOOP.


DAMAGES = {
    "garbled meta.json": lambda d: (d / "meta.json").write_text("{"),
    "meta.json of another format": lambda d: (d / "meta.json").write_text("[1]"),
    "garbled manifest.json": lambda d: (d / "manifest.json").write_text("not json"),
    "a folder where manifest.json belongs": lambda d: (
        (d / "manifest.json").unlink(),
        (d / "manifest.json").mkdir(),
    ),
    "a folder where meta.json belongs": lambda d: (
        (d / "meta.json").unlink(),
        (d / "meta.json").mkdir(),
    ),
    "an empty step folder": lambda d: (shutil.rmtree(d), d.mkdir()),
    "an unreadable meta.json": lambda d: loop_link(d / "meta.json"),
    "an unreadable manifest.json": lambda d: loop_link(d / "manifest.json"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_one_damaged_step_hides_nothing_else(registry, damage, capsys):
    DAMAGES[damage](step_dir(registry, 2))

    records = hub.list_checkpoints(registry)

    listed = {(r.name, r.step): r for r in records}
    assert set(listed) == {("lenet5-mnist", 1), ("lenet5-mnist", 2), ("other", 5)}
    assert listed["lenet5-mnist", 1].damaged is None and listed["other", 5].damaged is None
    bad = listed["lenet5-mnist", 2]
    assert bad.damaged and str(step_dir(registry, 2)) in bad.damaged
    assert bad.model_name is None and bad.params is None

    assert main(["checkpoints", "--registry", str(registry)]) == 0
    out = capsys.readouterr().out
    assert "other" in out and "DAMAGED" in out
    assert f"damaged: lenet5-mnist step 2: {bad.damaged}" in out

    # Loading the latest step names the damage and the good step before it; never a raw OSError.
    with pytest.raises(hub.CorruptCheckpointError, match=r"latest good step is 1\b"):
        hub.load("lenet5-mnist", registry=registry)
    with pytest.raises(hub.CorruptCheckpointError):
        hub.read_metadata("lenet5-mnist", registry=registry)


def test_a_folder_where_the_manifest_belongs_is_a_corrupt_checkpoint(registry):
    manifest = step_dir(registry, 2) / "manifest.json"
    manifest.unlink()
    manifest.mkdir()
    with pytest.raises(hub.CorruptCheckpointError, match=f"{manifest}: a folder where a file"):
        hub.load("lenet5-mnist", step=2, registry=registry)


def test_an_unreadable_name_folder_is_listed_as_damaged(registry, monkeypatch):
    # Running as root, permissions cannot make a folder unreadable: make listing it fail instead.
    real_iterdir = type(registry).iterdir

    def iterdir(path):
        if path.name == "other":
            raise PermissionError(13, "Permission denied", str(path))
        return real_iterdir(path)

    monkeypatch.setattr(type(registry), "iterdir", iterdir)
    records = hub.list_checkpoints(registry)
    assert [(r.name, r.step, r.damaged is None) for r in records] == [
        ("lenet5-mnist", 1, True),
        ("lenet5-mnist", 2, True),
        ("other", None, False),
    ]
    assert "unreadable (Permission denied)" in records[2].damaged


@pytest.mark.parametrize("how", ["renamed", "copied"])
def test_a_step_under_another_number_is_refused_naming_both(registry, how):
    move = shutil.move if how == "renamed" else shutil.copytree
    move(step_dir(registry, 1), step_dir(registry, 9999))
    with pytest.raises(
        hub.CorruptCheckpointError, match=r"records step 1 but its folder is named step_9999"
    ):
        hub.load("lenet5-mnist", step=9999, registry=registry)
    with pytest.raises(hub.CorruptCheckpointError, match="records step 1"):
        hub.read_metadata("lenet5-mnist", step=9999, registry=registry)
    assert "records step 1" in hub.list_checkpoints(registry)[-2].damaged


def test_metadata_without_the_stores_keys_is_corrupt(registry):
    def drop_model_name(folder):
        meta = json.loads((folder / "meta.json").read_text())
        del meta["model_name"]
        (folder / "meta.json").write_text(json.dumps(meta))

    edit_step(step_dir(registry, 2), drop_model_name)  # Re-signed: only the content is wrong.
    with pytest.raises(hub.CorruptCheckpointError, match="lacks a valid model_name"):
        hub.load("lenet5-mnist", step=2, registry=registry)


def test_read_metadata_reads_no_weights_but_checks_the_metadata(registry, monkeypatch):
    from zoo.hub import store

    def refuse(*args, **kwargs):
        raise AssertionError("weights were read")

    monkeypatch.setattr(store, "restore_tree", refuse)
    monkeypatch.setattr(store, "saved_tree", refuse)
    assert hub.read_metadata("lenet5-mnist", registry=registry)["step"] == 2
    assert hub.read_metadata("lenet5-mnist", step=1, registry=registry)["dataset"] == "mnist"
    path = step_dir(registry, 2) / "meta.json"
    path.write_text(path.read_text().replace('"mnist"', '"mnisT"'))
    with pytest.raises(hub.CorruptCheckpointError, match="sha256 differs"):
        hub.read_metadata("lenet5-mnist", registry=registry)


@pytest.mark.parametrize("name", ["", " ", ".hidden", "a/b", "x" * 200])
def test_an_empty_or_invalid_name_is_refused_everywhere(registry, name):
    calls = [
        lambda: save_lenet(registry, name=name),
        lambda: hub.load(name, registry=registry),
        lambda: hub.read_metadata(name, registry=registry),
        lambda: hub.latest_step(name, registry=registry),
    ]
    for call in calls:
        with pytest.raises(InvalidValueError, match="checkpoint name"):
            call()


def test_check_writable(tmp_path):
    assert hub.check_writable(tmp_path / "new" / "registry") == tmp_path / "new" / "registry"
    assert (tmp_path / "new" / "registry").is_dir()
    (tmp_path / "file").write_text("")
    blocked = re.escape(str(tmp_path / "file" / "registry"))
    with pytest.raises(NotAFolderError, match=f"checkpoint registry {blocked}: .* not a folder"):
        hub.check_writable(tmp_path / "file" / "registry")
    assert list((tmp_path / "new" / "registry").iterdir()) == []  # The probe is gone.


def test_import_torchvision_of_a_text_file_is_one_clear_line(tmp_path, capsys):
    pytest.importorskip("torch")
    text = tmp_path / "notes.pth"
    text.write_text("this is just text, not a state dict\n")
    assert main(["import-torchvision", "resnet18", str(text), "--name", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{text} is not a PyTorch file" in err


def test_a_malicious_pickle_is_refused_without_torchs_advice(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    evil = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": Payload(tmp_path / "ran")}, evil)
    assert main(["import-torchvision", "resnet18", str(evil), "--name", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a tensor-only PyTorch file" in err
    assert "weights_only" not in err and "safe_globals" not in err and "trusted" not in err
    assert not (tmp_path / "ran").exists()


@dataclasses.dataclass
class Payload:
    """Unpickling it would create the file `proof`: evidence that code ran."""

    proof: Path

    def __reduce__(self):
        return (open, (str(self.proof), "w"))


def test_a_name_is_claimed_by_one_run_at_a_time(tmp_path):
    with hub.claim_run("c", registry=tmp_path) as run_id:
        refused = pytest.raises(AlreadyExistsError, match=f"another run is training 'c'.*{run_id}")
        with refused, hub.claim_run("c", registry=tmp_path):
            pass
        with hub.claim_run("d", registry=tmp_path) as other:  # Another name: no conflict.
            assert other != run_id
        save_lenet(tmp_path, name="c", step=1, run_id=run_id)
    with hub.claim_run("c", registry=tmp_path):  # Released with its holder.
        pass
    # A run that saved nothing leaves nothing; one that saved keeps its steps, not its claim.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [".lock", "step_1"]


def test_a_run_cannot_claim_the_shipped_models():
    with (
        pytest.raises(NotWritableError, match="read-only"),
        hub.claim_run("lenet5-mnist5k", registry=hub.shipped_root()),
    ):
        pass
