"""The pure step functions, the optimizer and schedule, and on-device batching/augmentation."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo.training import augment, pipeline
from zoo.training.config import TrainConfig
from zoo.training.state import (
    create_train_state,
    decay_mask,
    learning_rate_schedule,
    make_optimizer,
)
from zoo.training.step import cross_entropy, eval_step, train_step


class TinyNet(nn.Module):
    """Conv -> BatchNorm -> Dropout -> Dense: every kind of state a zoo model can have."""

    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Conv(4, (3, 3))(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.5)(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


def initial_state(model: nn.Module, config: TrainConfig, input_shape: tuple[int, int, int]):
    tx = make_optimizer(config, steps_per_epoch=100)
    # Jitted: eagerly, every initialiser op would be compiled on its own (seconds on CPU).
    return jax.jit(lambda key: create_train_state(model, tx, input_shape, key))(jax.random.key(0))


def tiny_state(dropout: float = 0.0):
    return initial_state(TinyNet(dropout), TrainConfig(model="unused", epochs=1), (6, 6, 1))


jit_train_step = jax.jit(train_step)
jit_eval_step = jax.jit(eval_step, static_argnames="apply_fn")


def tiny_batch(seed: int = 0, size: int = 8):
    key = jax.random.key(seed)
    return {"image": jax.random.normal(key, (size, 6, 6, 1)) * 2 + 1, "label": jnp.arange(size) % 3}


def test_train_step_learns_and_compiles_once():
    traces = []

    def counted(state, batch):
        traces.append(1)
        return train_step(state, batch)

    step = jax.jit(counted, donate_argnums=0)
    state, batch = tiny_state(), tiny_batch()
    before = jax.device_get(state.params)
    losses = []
    for _ in range(8):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss_sum"] / metrics["count"]))
    assert len(traces) == 1, "train_step was traced more than once"
    assert int(state.step) == 8
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), before, state.params)
    assert all(jax.tree.leaves(changed))
    assert losses[-1] < losses[0] * 0.8
    assert float(metrics["count"]) == 8 and 0 <= float(metrics["correct"]) <= 8


def test_batch_stats_update_in_training_and_running_averages_serve_evaluation():
    state, batch = tiny_state(), tiny_batch()
    initial = jax.device_get(state.batch_stats)
    state, _ = jit_train_step(state, batch)
    stats = state.batch_stats["BatchNorm_0"]
    assert not np.allclose(stats["mean"], initial["BatchNorm_0"]["mean"])
    # With running averages, an example's logits do not depend on the rest of its batch.
    variables = state.variables
    apply = state.apply_fn
    logits = jax.jit(apply, static_argnames="train")(variables, batch["image"], train=False)
    alone = jax.jit(apply, static_argnames="train")(variables, batch["image"][:1], train=False)
    np.testing.assert_allclose(alone, logits[:1], rtol=1e-5, atol=1e-6)
    batch = {**batch, "weight": jnp.ones(8)}
    metrics = jit_eval_step(variables, batch, apply_fn=apply)
    expected = cross_entropy(logits, batch["label"]).sum()
    np.testing.assert_allclose(metrics["loss_sum"], expected, rtol=1e-6)
    masked = jit_eval_step(
        variables, {**batch, "weight": (jnp.arange(8) < 5).astype(float)}, apply_fn=apply
    )
    assert float(masked["count"]) == 5
    np.testing.assert_allclose(
        masked["loss_sum"], cross_entropy(logits, batch["label"])[:5].sum(), rtol=1e-6
    )


def test_dropout_masks_come_from_the_step_number_only():
    state, batch = tiny_state(dropout=0.5), tiny_batch()
    first, _ = jit_train_step(state, batch)
    again, _ = jit_train_step(state, batch)
    later, _ = jit_train_step(state.replace(step=state.step + 1), batch)
    kernel = lambda s: s.params["Dense_0"]["kernel"]  # noqa: E731
    np.testing.assert_array_equal(kernel(first), kernel(again))
    assert not np.allclose(kernel(first), kernel(later))


def test_weight_decay_skips_biases_and_norm_parameters():
    state = tiny_state()
    mask = decay_mask(state.params)
    assert mask["Conv_0"] == {"kernel": True, "bias": False}
    assert mask["BatchNorm_0"] == {"scale": False, "bias": False}
    for optimizer in ("sgd", "adamw"):
        config = TrainConfig(model="unused", optimizer=optimizer, weight_decay=0.1, warmup_epochs=0)
        tx = make_optimizer(config, steps_per_epoch=10)
        params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
        zeros = jax.tree.map(jnp.zeros_like, params)
        updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
        assert float(jnp.abs(updates["bias"]).max()) == 0, optimizer
        assert float(updates["kernel"].max()) < 0, optimizer


def test_schedule_warms_up_then_decays_to_zero():
    config = TrainConfig(model="unused", lr=0.4, epochs=4, warmup_epochs=1)
    schedule = jax.jit(learning_rate_schedule(config, steps_per_epoch=10))
    assert float(schedule(0)) == 0
    assert float(schedule(5)) == pytest.approx(0.2)
    assert float(schedule(10)) == pytest.approx(0.4)
    assert float(schedule(25)) == pytest.approx(0.2)
    assert float(schedule(40)) == pytest.approx(0, abs=1e-7)
    whole_run = TrainConfig(model="unused", lr=0.4, epochs=1, warmup_epochs=1)
    schedule = jax.jit(learning_rate_schedule(whole_run, steps_per_epoch=10))
    assert [float(schedule(s)) for s in (0, 5, 9)] == pytest.approx([0, 0.2, 0.36])


def test_label_smoothing_penalises_confidence():
    logits = jnp.array([[10.0, 0.0, 0.0]])
    plain = cross_entropy(logits, jnp.array([0]))
    smoothed = cross_entropy(logits, jnp.array([0]), label_smoothing=0.1)
    assert float(smoothed[0]) > float(plain[0])
    assert cross_entropy(logits.astype(jnp.bfloat16), jnp.array([0])).dtype == jnp.float32


def test_bf16_computes_in_bfloat16_but_keeps_float32_params_and_loss():
    model = zoo.create_model("lenet5", dtype=jnp.bfloat16)
    state = initial_state(model, TrainConfig(model="lenet5", precision="bf16"), (32, 32, 1))
    batch = {"image": jnp.ones((4, 32, 32, 1)), "label": jnp.arange(4)}
    assert jax.eval_shape(state.apply_fn, state.variables, batch["image"]).dtype == jnp.bfloat16
    state, metrics = jit_train_step(state, batch)
    assert {
        leaf.dtype
        for leaf in jax.tree.leaves((state.params, state.opt_state))
        if jnp.issubdtype(leaf.dtype, jnp.floating)
    } == {jnp.dtype(jnp.float32)}
    assert metrics["loss_sum"].dtype == jnp.float32


def test_random_crop_shifts_without_changing_shape_or_dtype():
    images = jnp.zeros((64, 8, 8, 1), jnp.uint8).at[:, 4, 4, 0].set(255)
    translate = jax.jit(augment.translate)
    shifted = translate(images, jax.random.key(0))
    assert shifted.shape == images.shape and shifted.dtype == jnp.uint8
    rows, cols = jnp.nonzero(shifted[..., 0] == 255)[1:]
    assert set(np.asarray(rows)) == set(range(2, 7)) and set(np.asarray(cols)) == set(range(2, 7))
    np.testing.assert_array_equal(shifted, translate(images, jax.random.key(0)))


def test_random_flip_mirrors_about_half_the_images():
    images = jnp.arange(2 * 4 * 3).reshape(1, 2, 4, 3).repeat(200, axis=0)
    flipped = jax.jit(augment.random_flip)(images, jax.random.key(1))
    mirrored = np.all(np.asarray(flipped) == np.asarray(images[:, :, ::-1]), axis=(1, 2, 3))
    assert 60 < mirrored.sum() < 140
    assert np.all(mirrored | np.all(np.asarray(flipped) == np.asarray(images), axis=(1, 2, 3)))


def test_epoch_order_is_a_fresh_permutation_each_epoch():
    first = pipeline.epoch_order(0, 0, num_examples=10, batch_size=3)
    second = pipeline.epoch_order(0, 1, num_examples=10, batch_size=3)
    assert first.shape == (3, 3) and len(set(first.ravel())) == 9
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(first, pipeline.epoch_order(0, 0, num_examples=10, batch_size=3))
    assert not np.array_equal(first, pipeline.epoch_order(1, 0, num_examples=10, batch_size=3))


def test_eval_order_covers_every_example_once():
    indices, weights = pipeline.eval_order(num_examples=10, batch_size=4)
    assert indices.shape == weights.shape == (3, 4)
    assert sorted(indices[weights > 0].tolist()) == list(range(10))
    assert weights.sum() == 10 and weights[-1].tolist() == [1, 1, 0, 0]
