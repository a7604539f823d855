"""`zoo export`: one portable artifact that reproduces `LoadedModel.predict` from raw images."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo import hub
from zoo.cli import main
from zoo.errors import InvalidValueError
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
