"""Damaged checkpoints are refused, naming the file, before a single wrong number is restored."""

from __future__ import annotations

import json

import pytest
from test_hub import assert_trees_equal, random_variables, save_lenet

from zoo import hub


@pytest.fixture
def saved(tmp_path):
    """Steps 1, 2, 3 of one name (seed = step); returns the registry."""
    for step in (1, 2, 3):
        save_lenet(tmp_path, step=step, seed=step)
    return tmp_path


def step_dir(registry, step):
    return registry / "lenet5-mnist" / f"step_{step}"


def largest_data_file(registry, step):
    return max(
        (p for p in (step_dir(registry, step) / "variables").rglob("*") if p.is_file()),
        key=lambda p: p.stat().st_size,
    )


def flip_byte(path, offset=None):
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_flipped_byte_names_the_file_and_the_latest_good_step(saved):
    bad = largest_data_file(saved, 3)
    flip_byte(bad)

    with pytest.raises(hub.CorruptCheckpointError) as error:
        hub.load("lenet5-mnist", registry=saved)

    assert error.value.path == bad
    assert "sha256 differs" in str(error.value)
    assert "the latest good step is 2: load('lenet5-mnist', step=2)" in str(error.value)
    assert_trees_equal(
        hub.load("lenet5-mnist", step=2, registry=saved).variables,
        random_variables("lenet5", seed=2),
    )


def test_explicit_step_error_has_no_advice(saved):
    flip_byte(largest_data_file(saved, 2))
    with pytest.raises(hub.CorruptCheckpointError) as error:
        hub.load("lenet5-mnist", step=2, registry=saved)
    assert "latest good step" not in str(error.value)


def test_advice_skips_earlier_steps_that_are_corrupt_too(saved):
    flip_byte(largest_data_file(saved, 3))
    flip_byte(step_dir(saved, 2) / "meta.json", offset=5)
    with pytest.raises(hub.CorruptCheckpointError, match=r"latest good step is 1\b"):
        hub.load("lenet5-mnist", registry=saved)
    flip_byte(largest_data_file(saved, 1))
    with pytest.raises(hub.CorruptCheckpointError, match="no earlier step of it verifies"):
        hub.load("lenet5-mnist", registry=saved)


def test_truncated_file(saved):
    bad = largest_data_file(saved, 3)
    bad.write_bytes(bad.read_bytes()[:-1])
    with pytest.raises(hub.CorruptCheckpointError, match=r"the manifest says .* \(truncated\?\)"):
        hub.load("lenet5-mnist", step=3, registry=saved)


def test_missing_file(saved):
    gone = step_dir(saved, 3) / "variables" / "_METADATA"
    gone.unlink()
    with pytest.raises(hub.CorruptCheckpointError, match=f"{gone}: missing"):
        hub.load("lenet5-mnist", registry=saved)


def test_extra_file(saved):
    extra = step_dir(saved, 3) / "variables" / "notes.txt"
    extra.write_text("hello")
    with pytest.raises(hub.CorruptCheckpointError, match=f"{extra}: not in the manifest"):
        hub.load("lenet5-mnist", registry=saved)


def test_tampered_metadata(saved):
    meta_path = step_dir(saved, 3) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["metrics"]["val_accuracy"] = 0.999
    meta_path.write_text(json.dumps(meta, indent=1))
    with pytest.raises(hub.CorruptCheckpointError, match=f"{meta_path}: "):
        hub.load("lenet5-mnist", registry=saved)


def test_tampered_manifest(saved):
    path = step_dir(saved, 3) / "manifest.json"
    manifest = json.loads(path.read_text())
    entry = manifest["files"]["meta.json"]
    entry["sha256"] = entry["sha256"][::-1]
    path.write_text(json.dumps(manifest))
    with pytest.raises(
        hub.CorruptCheckpointError, match=f"{path}: its file table does not match its digest"
    ):
        hub.load("lenet5-mnist", registry=saved)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "missing"),
        (b'{"files": {', "not valid JSON"),
        (b"[]", "not a jax-zoo-manifest"),
    ],
)
def test_missing_or_garbled_manifest(saved, content, reason):
    path = step_dir(saved, 3) / "manifest.json"
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content)
    with pytest.raises(hub.CorruptCheckpointError, match=f"{path}: {reason}"):
        hub.load("lenet5-mnist", registry=saved)


def test_train_state_is_verified_too(tmp_path):
    save_lenet(tmp_path, step=1, train_state={"count": random_variables("lenet5")["params"]})
    flip_byte(step_dir(tmp_path, 1) / "train_state" / "_METADATA", offset=10)
    with pytest.raises(hub.CorruptCheckpointError, match="train_state/_METADATA"):
        hub.load("lenet5-mnist", registry=tmp_path, train_state={})
