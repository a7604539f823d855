"""Fine-tuning from the registry (`--init-from`) and freezing (`--train-only`), for their effect."""

from __future__ import annotations

import io
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rich.console import Console

import zoo
from zoo import hub
from zoo.hub import ArchitectureMismatchError
from zoo.training.config import TrainConfig
from zoo.training.finetune import overlay, start_from
from zoo.training.loop import fit
from zoo.training.state import create_train_state, frozen_paths, make_optimizer
from zoo.training.step import train_step


def save_source(registry: Path, name: str, **model_config) -> dict:
    model = zoo.create_model("mlp", **model_config)
    variables = jax.jit(model.init)(jax.random.key(7), jnp.zeros((1, 28, 28, 1)))
    hub.save(
        name,
        model_name="mlp",
        model_config=model_config,
        variables=variables,
        step=5,
        registry=registry,
    )
    return jax.device_get(variables)


def tiny_config(folder: Path, **overrides) -> TrainConfig:
    settings = {
        "model": "mlp",
        "dataset": "synthetic",
        "epochs": 1,
        "batch_size": 32,
        "max_train_examples": 128,
        "lr": 0.05,
        "registry": str(folder / "registry"),
        "log": str(folder / "log.jsonl"),
    }
    return TrainConfig(**{**settings, **overrides})


def test_fine_tuning_loads_the_backbone_reinitialises_the_head_and_freezes(tmp_path):
    config = tiny_config(tmp_path, init_from="three-classes", train_only="classifier/*")
    source = save_source(Path(config.registry), "three-classes", num_classes=3)
    output = io.StringIO()
    fit(config, console=Console(file=output, width=200))
    assert (
        "initialised from three-classes step 5 (mlp); re-initialised (new head): "
        "params/classifier/bias, params/classifier/kernel" in output.getvalue()
    )
    tuned = hub.load(config.run_name, registry=config.registry)
    # The frozen backbone is the source's, bit for bit, after training; the head is new.
    jax.tree.map(
        np.testing.assert_array_equal,
        tuned.variables["params"]["hidden0"],
        source["params"]["hidden0"],
    )
    assert tuned.variables["params"]["classifier"]["kernel"].shape == (2, 10)
    record = tuned.meta["init_from"]
    assert record["name"] == "three-classes" and record["step"] == 5
    assert record["model_name"] == "mlp" and len(record["manifest_sha256"]) == 64
    assert record["created"] and record["reinitialised"] == [
        "params/classifier/bias",
        "params/classifier/kernel",
    ]


def test_without_freezing_the_loaded_backbone_trains_on(tmp_path):
    config = tiny_config(tmp_path, init_from="ten-classes")
    source = save_source(Path(config.registry), "ten-classes")
    output = io.StringIO()
    fit(config, console=Console(file=output, width=200))
    assert "re-initialised" not in output.getvalue()  # Same head shape: everything loads.
    tuned = hub.load(config.run_name, registry=config.registry).variables["params"]
    assert not np.array_equal(tuned["hidden0"]["kernel"], source["params"]["hidden0"]["kernel"])
    # Started from the source, a short run stays near it (a fresh init would be far away).
    gap = np.abs(tuned["hidden0"]["kernel"] - source["params"]["hidden0"]["kernel"]).max()
    assert gap < 0.05


def test_a_backbone_that_does_not_fit_is_an_error_naming_the_leaf(tmp_path):
    config = tiny_config(tmp_path, init_from="wider", model="mlp")
    save_source(Path(config.registry), "wider", hidden=(3,), num_classes=3)
    with pytest.raises(ArchitectureMismatchError, match="params/hidden0/kernel"):
        fit(config, console=Console(quiet=True))


def test_only_the_class_axis_of_a_head_may_differ():
    fresh = {"params": {"head": {"kernel": np.zeros((4, 10)), "bias": np.zeros(10)}}}
    source = {"params": {"head": {"kernel": np.ones((4, 1000)), "bias": np.ones(1000)}}}
    merged, head = overlay(fresh, source, num_classes=10, source_classes=1000, what="src")
    assert head == ["params/head/bias", "params/head/kernel"]
    assert merged["params"]["head"]["kernel"].sum() == 0
    wrong = {"params": {"head": {"kernel": np.ones((5, 1000)), "bias": np.ones(1000)}}}
    with pytest.raises(ArchitectureMismatchError, match="params/head/kernel"):
        overlay(fresh, wrong, num_classes=10, source_classes=1000, what="src")
    with pytest.raises(ArchitectureMismatchError, match="params/head/kernel"):
        overlay(fresh, source, num_classes=10, source_classes=10, what="src")


class TinyNet(nn.Module):
    """Conv -> BatchNorm -> Dense: a backbone with statistics and a head."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Conv(4, (3, 3))(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.5)(x))
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_frozen_parameters_and_statistics_stay_bit_identical(optimizer):
    config = TrainConfig(model="unused", optimizer=optimizer, weight_decay=0.1, epochs=1)
    tx = make_optimizer(config, steps_per_epoch=10)
    create = lambda key: create_train_state(  # noqa: E731
        TinyNet(), tx, (6, 6, 1), key, train_only="Dense_0/*", ema_decay=0.5
    )
    state = jax.jit(create)(jax.random.key(0))
    before = jax.device_get(state.variables)
    step = jax.jit(train_step)
    for seed in range(3):
        key = jax.random.key(seed)
        batch = {"image": jax.random.normal(key, (8, 6, 6, 1)) + 1, "label": jnp.arange(8) % 3}
        state, _ = step(state, batch)
    after = jax.device_get(state.variables)
    for collection in ("params", "batch_stats"):
        for module in ("Conv_0", "BatchNorm_0"):
            if module in before[collection]:
                jax.tree.map(
                    np.testing.assert_array_equal,
                    before[collection][module],
                    after[collection][module],
                )
        assert "BatchNorm_0" in before["batch_stats"]
    jax.tree.map(
        np.testing.assert_array_equal, before["params"]["Conv_0"], state.ema["params"]["Conv_0"]
    )
    assert not np.allclose(
        before["params"]["Dense_0"]["kernel"], after["params"]["Dense_0"]["kernel"]
    )


def test_train_only_globs_match_paths_without_their_collection():
    variables = {
        "params": {"stem": {"kernel": 0}, "bn": {"scale": 0}, "head": {"kernel": 0}},
        "batch_stats": {"bn": {"mean": 0}},
    }
    assert frozen_paths(variables, None) == frozenset()
    assert frozen_paths(variables, "head/*, bn/*") == {"params/stem/kernel"}
    assert frozen_paths(variables, "head/*") == {
        "params/stem/kernel",
        "params/bn/scale",
        "batch_stats/bn/mean",
    }


def test_the_cli_names_an_unknown_source_in_one_line(tmp_path, capsys):
    from zoo.cli import main

    registry = tmp_path / "registry"
    save_source(registry, "three-classes", num_classes=3)
    argv = ["train", "mlp", "--dataset", "synthetic", "--registry", str(registry)]
    assert main([*argv, "--init-from", "three-clases", "--train-only", "classifier/*"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("zoo train: error: no checkpoint named 'three-clases'")
    assert "three-classes" in error and "\n" not in error


def test_replace_head_refuses_a_bad_key_and_variables_that_are_not_the_models():
    model = zoo.create_model("mlp", hidden=(4,))
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    for key in (None, 0, "seed", jnp.zeros(3, jnp.uint32)):
        with pytest.raises(TypeError, match=r"key must be a PRNG key such as jax\.random\.key"):
            zoo.replace_head(model, variables, 3, key)
    for bad, message in (
        ({"params": {}}, "params/hidden0/kernel: missing"),
        ({"params": {"hidden0": {"kernel": jnp.zeros((784, 5))}}}, r"shape \(784, 5\), not"),
        (
            {"params": {**variables["params"], "extra": {"w": jnp.zeros(1)}}},
            "params/extra/w: not a variable of the model",
        ),
    ):
        with pytest.raises(ValueError, match=message) as error:
            zoo.replace_head(model, bad, 3, jax.random.key(1))
        assert isinstance(error.value, zoo.ZooError)
    with pytest.raises(TypeError, match="variables must map collections to trees"):
        zoo.replace_head(model, [variables], 3, jax.random.key(1))
    # A raw key works as well as a typed one; a headless result needs no key at all.
    new, replaced = zoo.replace_head(model, variables, 3, jax.random.PRNGKey(1))
    assert replaced["params"]["classifier"]["kernel"].shape == (4, 3)
    headless, kept = zoo.replace_head(new, replaced, 0, None)
    assert "classifier" not in kept["params"] and headless.num_classes == 0


def test_init_from_finds_a_shipped_entry_with_a_registry_of_ones_own(tmp_path):
    # --registry DIR is where the run saves and what it reads first; the shipped models are
    # still read after it, as without --registry (it failed: "no checkpoint named ... in DIR").
    registry = str(tmp_path / "mine")  # not there yet: the run would create it
    model = zoo.create_model("lenet5")
    tx = make_optimizer(TrainConfig(model="lenet5", epochs=1), steps_per_epoch=1)
    state = create_train_state(model, tx, (32, 32, 1), jax.random.key(0))
    start = start_from(state, "lenet5-mnist5k", num_classes=10, registry=registry)
    shipped = hub.load("lenet5-mnist5k", registry=registry)
    assert shipped.source == "shipped" and start.source["step"] == shipped.step
    jax.tree.map(np.testing.assert_array_equal, start.state.params, shipped.variables["params"])


def test_the_weight_average_has_buffers_of_its_own(tmp_path):
    # A train step donates the state: an average sharing the parameters' buffers was donated
    # twice ("Attempt to donate the same buffer twice"), fresh or after --init-from.
    model = zoo.create_model("lenet5")
    tx = make_optimizer(TrainConfig(model="lenet5", epochs=1), steps_per_epoch=1)
    state = create_train_state(model, tx, (32, 32, 1), jax.random.key(0), ema_decay=0.9)
    tuned = start_from(state, "lenet5-mnist5k", num_classes=10, registry=str(tmp_path)).state

    def buffers(tree):
        leaves = jax.tree.leaves(tree)
        return {leaf.unsafe_buffer_pointer() for leaf in leaves if isinstance(leaf, jax.Array)}

    for fresh in (state, tuned):
        assert buffers(fresh.ema) and not buffers(fresh.variables) & buffers(fresh.ema)
