"""`zoo export`: one portable artifact that reproduces `LoadedModel.predict` from raw images."""

from __future__ import annotations

import errno
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo import hub, outputs
from zoo.cli import main
from zoo.errors import InvalidValueError, NotWritableError
from zoo.export import custom_calls, export_model
from zoo.preprocessing import Preprocessing

RAW_SHAPE = (28, 28, 1)  # MNIST's digits, which LeNet-5's preprocessing pads to 32x32


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, hub.LoadedModel]:
    registry = tmp_path_factory.mktemp("registry")
    model = zoo.create_model("lenet5")
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    raw = np.random.default_rng(0).integers(0, 256, (64, *RAW_SHAPE), dtype=np.uint8)
    hub.save(
        "digits",
        model_name="lenet5",
        model_config={},
        variables=variables,
        step=1,
        meta={"preprocessing": Preprocessing.fit(raw, (32, 32, 1)).to_dict()},
        registry=registry,
    )
    return registry, hub.load("digits", registry=registry)


def raw_images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, *RAW_SHAPE), dtype=np.uint8)


def test_the_export_reproduces_predict_for_any_batch_on_every_platform(saved):
    _, loaded = saved
    exported = export_model(loaded)
    assert exported.platforms == ("cpu", "cuda", "tpu")
    assert str(exported.in_avals[0].shape[0]) == "batch"
    assert custom_calls(exported) == []  # portable: nothing a platform must have registered
    for count in (1, 7, 32):
        images = raw_images(count, seed=count)
        logits = exported.call(images)
        assert logits.shape == (count, 10) and logits.dtype == jnp.float32
        np.testing.assert_allclose(logits, loaded.logits(images), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(np.argmax(logits, -1), loaded.predict(images))


def test_zoo_export_writes_a_file_jax_alone_can_run(saved, tmp_path, capsys):
    pytest.importorskip("flatbuffers", reason="jax.export serialization needs flatbuffers")
    registry, loaded = saved
    out = tmp_path / "digits.jax"
    assert main(["export", "digits", "--out", str(out), "--registry", str(registry)]) == 0
    assert "uint8[batch, 28, 28, 1] images -> float32[batch, 10] logits" in capsys.readouterr().out
    exported = jax.export.deserialize(bytearray(out.read_bytes()))
    images = raw_images(5, seed=1)
    np.testing.assert_array_equal(np.argmax(exported.call(images), -1), loaded.predict(images))
    assert custom_calls(exported) == []


def test_bad_platforms_and_paths_are_one_line_errors(saved, tmp_path, capsys):
    registry, loaded = saved
    with pytest.raises(InvalidValueError, match="platforms must be some of cpu, cuda, tpu"):
        export_model(loaded, platforms=["gpu"])
    argv = ["export", "digits", "--registry", str(registry), "--out"]
    assert main([*argv, str(tmp_path / "missing" / "x.jax")]) == 2
    assert "need a file path in an existing folder" in capsys.readouterr().err


def registry_targets(registry: Path, user: Path, tmp_path: Path) -> list[tuple[str, list[str]]]:
    """--out paths that land in a registry, each with the extra flags of its command line."""
    step = registry / "digits" / "step_1"
    elsewhere = tmp_path / "elsewhere"  # A registry the command is not told about.
    hub.save(
        "other",
        model_name="mlp",
        model_config={},
        variables=jax.jit(zoo.create_model("mlp").init)(
            jax.random.key(0), jnp.zeros((1, 28, 28, 1))
        ),
        step=3,
        registry=elsewhere,
    )
    (tmp_path / "link").symlink_to(step)
    given = ["--registry", str(registry)]
    return [
        (str(step / "manifest.json"), given),  # The fuzz's: it made the entry corrupt.
        (str(step / "meta.json"), given),
        (str(step / "new.jax"), given),
        (str(registry / "digits" / "new.jax"), given),
        (str(registry / "new.jax"), given),
        (str(registry / "digits" / ".." / "digits" / "step_1" / "manifest.json"), given),
        (str(tmp_path / "link" / "manifest.json"), given),  # A symlink into a step.
        (str(user / "new.jax"), given),  # The user's registry, though not the one read.
        (str(hub.shipped_root() / "new.jax"), given),
        (str(elsewhere / "other" / "step_3" / "meta.json"), given),
        (str(elsewhere / "other" / "new.jax"), given),
    ]


def test_an_export_never_lands_in_a_registry(saved, tmp_path, capsys, user_registry):
    registry, _ = saved
    manifests = {path: path.read_bytes() for path in registry.rglob("manifest.json")}
    for out, flags in registry_targets(registry, user_registry, tmp_path):
        assert main(["export", "digits", "--out", out, *flags]) == 2, out
        err = capsys.readouterr().err
        assert (
            err.startswith(f"zoo export: error: --out {out}: it is inside ")
            and err.count("\n") == 1
        ), err
    assert not (registry / "new.jax").exists() and not (user_registry / "new.jax").exists()
    assert {path: path.read_bytes() for path in registry.rglob("manifest.json")} == manifests
    assert hub.load("digits", registry=registry).step == 1  # Still verifies.
    assert hub.load("other", registry=tmp_path / "elsewhere").step == 3


def test_duplicate_platforms_are_refused_before_loading(saved, capsys):
    registry, loaded = saved
    with pytest.raises(InvalidValueError, match="each once, got 'cpu', 'cpu'"):
        export_model(loaded, platforms=["cpu", "cpu"])
    argv = ["export", "missing-name", "--out", "x.jax", "--platforms", "cpu,cpu"]
    assert main([*argv, "--registry", str(registry)]) == 2
    assert "platforms must be some of cpu, cuda, tpu, each once" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_a_full_disk_is_a_one_line_error(saved, capsys):
    pytest.importorskip("flatbuffers", reason="jax.export serialization needs flatbuffers")
    registry, _ = saved
    argv = ["export", "digits", "--out", "/dev/full", "--platforms", "cpu"]
    assert main([*argv, "--registry", str(registry)]) == 2
    err = capsys.readouterr().err
    assert err == "zoo export: error: cannot write /dev/full: No space left on device\n"


def test_a_failed_write_leaves_the_older_file_whole_and_nothing_beside_it(tmp_path, monkeypatch):
    out = tmp_path / "model.jax"
    out.write_bytes(b"the older, good export")
    out.chmod(0o640)

    def disk_full(file):
        file.write(b"half of the new")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(NotWritableError, match=r"cannot write .*model\.jax: No space left"):
        outputs.write_with(out, disk_full)
    assert out.read_bytes() == b"the older, good export"
    assert sorted(tmp_path.iterdir()) == [out]  # No temporary file left.
    outputs.write_bytes(out, b"new")
    assert out.read_bytes() == b"new" and out.stat().st_mode & 0o777 == 0o640
    assert sorted(tmp_path.iterdir()) == [out]
