"""The modern recipe, each setting tested for its effect: gradient accumulation, schedules, the
weight average, mixup/CutMix, and the model rates."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from rich.console import Console

import zoo
from zoo import hub
from zoo.data import make_synthetic
from zoo.errors import InvalidTypeError, InvalidValueError
from zoo.training import augment, loop, recipe
from zoo.training.config import TrainConfig, resolve
from zoo.training.loop import fit
from zoo.training.state import (
    create_train_state,
    learning_rate_at_step,
    learning_rate_schedule,
    make_optimizer,
)
from zoo.training.step import soft_cross_entropy, train_step

jit_train_step = jax.jit(train_step)


def mlp_state(config: TrainConfig, steps_per_epoch: int, **options):
    """A small MLP: no BatchNorm or dropout, so N small batches can equal one large one."""
    model = zoo.create_model("mlp", hidden=(16,))
    tx = make_optimizer(config, steps_per_epoch)
    create = lambda key: create_train_state(model, tx, (28, 28, 1), key, **options)  # noqa: E731
    return jax.jit(create)(jax.random.key(0))


def digits(count: int, seed: int = 0):
    key = jax.random.key(seed)
    return {
        "image": jax.random.normal(key, (count, 28, 28, 1)),
        "label": jax.random.randint(jax.random.fold_in(key, 1), (count,), 0, 10),
    }


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_accumulating_n_batches_is_one_update_on_the_n_times_larger_batch(optimizer):
    settings = dict(model="mlp", optimizer=optimizer, lr=0.05, epochs=1, nesterov=True)
    settings |= dict(weight_decay=1e-2, warmup_epochs=0.5)
    n, micro, updates = 4, 4, 3
    big = TrainConfig(**settings)
    accumulated = TrainConfig(**settings, grad_accum_steps=n)
    # Both schedules span 6 updates: 6 big steps, or 24 micro-steps.
    big_state = mlp_state(big, steps_per_epoch=6)
    small_state = mlp_state(accumulated, steps_per_epoch=6 * n)
    for update in range(updates):
        batch = digits(n * micro, seed=update)
        big_state, _ = jit_train_step(big_state, batch)
        for i in range(n):
            part = jax.tree.map(lambda x: x[i * micro : (i + 1) * micro], batch)  # noqa: B023
            before = small_state.params
            small_state, _ = jit_train_step(small_state, part)
            if i < n - 1:  # No update until the N-th batch.
                jax.tree.map(np.testing.assert_array_equal, before, small_state.params)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-7),
            big_state.params,
            small_state.params,
        )
    assert int(small_state.step) == n * int(big_state.step)


def test_the_schedule_counts_updates_not_batches():
    config = TrainConfig(model="unused", lr=0.4, epochs=2, warmup_epochs=1, grad_accum_steps=5)
    by_update = jax.jit(learning_rate_schedule(config, steps_per_epoch=50))  # 10 updates/epoch
    assert float(by_update(10)) == pytest.approx(0.4)  # warm-up ends after one epoch's updates
    assert float(by_update(20)) == pytest.approx(0, abs=1e-7)
    by_step = learning_rate_at_step(config, steps_per_epoch=50)
    assert float(by_step(54)) == pytest.approx(float(by_update(10)))


def test_the_schedules_have_their_shapes():
    base = dict(model="unused", lr=1.0, epochs=10, warmup_epochs=2)
    values = {}
    for schedule in ("cosine", "linear", "step", "onecycle"):
        fn = jax.jit(learning_rate_schedule(TrainConfig(**base, schedule=schedule), 10))
        values[schedule] = [float(fn(s)) for s in (0, 10, 20, 49, 50, 74, 75, 99)]
    assert values["step"] == pytest.approx([0, 0.5, 1, 1, 0.1, 0.1, 0.01, 0.01])
    assert values["linear"][:3] == pytest.approx([0, 0.5, 1])
    assert values["linear"][4] == pytest.approx(1 - 30 / 80)  # 1 at 20 to 0 at 100
    cosine = values["cosine"]
    assert cosine[2] == pytest.approx(1) and cosine[4] == pytest.approx(
        0.5 + 0.5 * np.cos(np.pi * 30 / 80)
    )
    onecycle = values["onecycle"]
    assert onecycle[0] == pytest.approx(1 / 25) and onecycle[2] == pytest.approx(1)
    assert onecycle[-1] < 1e-3 and onecycle[3] > onecycle[4] > onecycle[6]


def test_ema_follows_the_weights_with_a_warmed_up_decay():
    config = TrainConfig(model="mlp", lr=0.05, epochs=1)
    state = mlp_state(config, 10, ema_decay=0.9)
    jax.tree.map(np.testing.assert_array_equal, state.ema["params"], state.params)
    expected = jax.device_get(state.ema)
    for step in range(1, 4):
        state, _ = jit_train_step(state, digits(8, seed=step))
        decay = min(0.9, (1 + step) / (10 + step))
        expected = jax.tree.map(
            lambda a, x, d=decay: a + (1 - d) * (x - a), expected, jax.device_get(state.variables)
        )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9), expected, state.ema
    )
    assert not np.allclose(
        state.ema["params"]["hidden0"]["kernel"], state.params["hidden0"]["kernel"]
    )
    assert state.saved_variables is state.ema and "variables" in state.resumable()


def tiny_config(folder: Path, **overrides) -> TrainConfig:
    settings = {
        "model": "mlp",
        "dataset": "synthetic",
        "epochs": 2,
        "batch_size": 32,
        "max_train_examples": 256,
        "lr": 0.05,
        "registry": str(folder / "registry"),
        "log": str(folder / "log.jsonl"),
    }
    return TrainConfig(**{**settings, **overrides})


def test_ema_is_evaluated_saved_as_the_variables_and_resumed_exactly(tmp_path, monkeypatch):
    recipe_settings = dict(ema_decay=0.9, mixup=0.4, cutmix=1.0, grad_accum_steps=2)
    config = tiny_config(tmp_path, **recipe_settings)
    fit(config, console=Console(quiet=True))
    loaded = hub.load(config.run_name, registry=config.registry)
    assert loaded.meta["variables"] == "ema"
    metrics = loaded.meta["metrics"]
    assert {"ema_val_loss", "ema_val_accuracy", "val_accuracy"} <= set(metrics)
    # The saved variables are the average: their accuracy is the logged ema_ one.

    data = make_synthetic((28, 28, 1), 10)
    accuracy = float(np.mean(loaded.predict(data.test.images) == data.test.labels))
    assert accuracy == pytest.approx(metrics["ema_val_accuracy"], abs=1e-6)
    assert metrics["ema_val_loss"] != metrics["val_loss"]

    # Interrupted after epoch 1 and resumed, the same run ends with the same average.
    again = tiny_config(tmp_path / "again", **recipe_settings)
    train_epoch = loop._train_epoch

    def interrupted(experiment, train_fn, state, epoch, *rest, **options):
        if epoch == 1:
            raise KeyboardInterrupt
        return train_epoch(experiment, train_fn, state, epoch, *rest, **options)

    with monkeypatch.context() as patch:
        patch.setattr(loop, "_train_epoch", interrupted)
        with pytest.raises(KeyboardInterrupt):
            fit(again, console=Console(quiet=True))
    fit(again, resume=True, console=Console(quiet=True))
    resumed = hub.load(again.run_name, registry=again.registry)
    jax.tree.map(np.testing.assert_array_equal, loaded.variables, resumed.variables)
    record = json.loads(Path(config.log).read_text().splitlines()[-1])
    assert 0 <= record["train_accuracy"] <= 1 and record["lr"] >= 0


def test_mixup_blends_images_and_targets_by_one_lambda():
    images = jax.random.uniform(jax.random.key(0), (6, 4, 4, 1))
    targets = jax.nn.one_hot(jnp.arange(6) % 3, 3)
    mixed, soft = augment.mixup(images, targets, jax.random.key(1), alpha=0.4)
    lam = float(soft[0, 0])  # example 0 (class 0) is mixed with example 5 (class 2)
    assert 0 < lam < 1 and float(soft[0, 2]) == pytest.approx(1 - lam)
    np.testing.assert_allclose(mixed, lam * images + (1 - lam) * images[::-1], rtol=1e-6)
    np.testing.assert_allclose(soft.sum(-1), 1, rtol=1e-6)


def test_cutmix_pastes_a_box_and_mixes_targets_by_its_area():
    images = jnp.zeros((2, 16, 16, 1)).at[1].set(1.0)
    targets = jax.nn.one_hot(jnp.arange(2), 2)
    areas = []
    for seed in range(20):
        mixed, soft = augment.cutmix(images, targets, jax.random.key(seed), alpha=1.0)
        pasted = float(mixed[0].mean())  # example 0 is zeros; its box comes from the ones
        assert set(np.unique(np.asarray(mixed))) <= {0.0, 1.0}
        assert float(soft[0, 1]) == pytest.approx(pasted, abs=1e-6)
        areas.append(pasted)
    assert 0.1 < np.mean(areas) < 0.9 and len(set(areas)) > 5


def test_with_both_each_batch_gets_mixup_or_cutmix_with_probability_one_half():
    mixing = augment.batch_mixing(1.0, 1.0, num_classes=2)
    images = jnp.zeros((2, 8, 8, 1)).at[1].set(1.0)
    kinds = []
    for seed in range(40):
        mixed, target, label = jax.jit(mixing)(images, jnp.arange(2), jax.random.key(seed))
        box = bool(np.all(np.isin(np.asarray(mixed), [0.0, 1.0])))
        kinds.append(box)
        assert label.tolist() == np.asarray(target).argmax(-1).tolist()
    assert 10 < sum(kinds) < 30
    assert augment.batch_mixing(0.0, 0.0, 10) is None


def test_a_mixed_batch_trains_against_its_soft_targets():
    config = TrainConfig(model="mlp", lr=0.05, epochs=1)
    state = mlp_state(config, 10)
    batch = digits(8)
    mixing = augment.batch_mixing(0.5, 0.0, num_classes=10)
    image, target, label = mixing(batch["image"], batch["label"], jax.random.key(3))
    mixed = {"image": image, "label": label, "target": target}
    _, metrics = jit_train_step(state, mixed)
    logits = state.apply_fn(state.variables, image, train=True, mutable=["batch_stats"])[0]
    expected = soft_cross_entropy(logits, target).sum()
    np.testing.assert_allclose(metrics["loss_sum"], expected, rtol=1e-5)


def test_model_rates_reach_models_with_the_field_and_are_refused_elsewhere():
    dropout = TrainConfig(model="alexnet", dropout_rate=0.1)
    assert recipe.model_overrides(dropout, zoo.model_info("alexnet")) == {"dropout_rate": 0.1}
    assert recipe.model_overrides(TrainConfig(model="alexnet"), zoo.model_info("alexnet")) == {}
    with pytest.raises(InvalidValueError, match=r"lenet5 has no dropout_rate field.*alexnet"):
        recipe.model_overrides(
            TrainConfig(model="lenet5", dropout_rate=0.1), zoo.model_info("lenet5")
        )
    with pytest.raises(InvalidValueError, match="lenet5 has no drop_path_rate field"):
        recipe.model_overrides(
            TrainConfig(model="lenet5", drop_path_rate=0.1), zoo.model_info("lenet5")
        )


def test_drop_path_rate_reaches_a_model_that_has_it():
    having = [m for m in zoo.list_models() if "drop_path_rate" in zoo.model_info(m).config()]
    if not having:
        pytest.skip("no registered model has a drop_path_rate field yet (the ResNets will)")
    name = having[0]
    overrides = recipe.model_overrides(
        TrainConfig(model=name, drop_path_rate=0.2), zoo.model_info(name)
    )
    assert zoo.create_model(name, **overrides).drop_path_rate == 0.2


@pytest.mark.parametrize("setting", ["mixup", "cutmix", "label_smoothing"])
def test_class_label_settings_need_a_classifier_and_are_refused_with_the_config(setting):
    with pytest.raises(InvalidValueError, match="conv_autoencoder is a reconstruction model"):
        resolve({"model": "conv_autoencoder", setting: 0.2})


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"grad_accum_steps": 0}, "grad_accum_steps must be at least 1, got 0"),
        ({"schedule": "exp"}, "schedule must be one of 'cosine', 'linear', 'step', 'onecycle'"),
        ({"schedule": "onecycle"}, "schedule 'onecycle' ramps up over warmup_epochs"),
        ({"ema_decay": 1.0}, r"ema_decay must be in \[0, 1\), got 1.0"),
        ({"mixup": -0.1}, "mixup must be >= 0"),
        ({"cutmix": -1}, "cutmix must be >= 0"),
        ({"drop_path_rate": 1.5}, r"drop_path_rate must be in \[0, 1\)"),
        ({"dropout_rate": -0.5}, r"dropout_rate must be in \[0, 1\)"),
        ({"train_only": "head/*,"}, "train_only must be comma-separated globs"),
    ],
)
def test_recipe_settings_are_checked(settings, message):
    with pytest.raises(InvalidValueError, match=message):
        resolve({"model": "mlp", **settings})


def test_recipe_settings_are_typed():
    with pytest.raises(InvalidTypeError, match=r"grad_accum_steps must be int, got float 2\.0"):
        TrainConfig(model="lenet5", grad_accum_steps=2.0)
    with pytest.raises(InvalidTypeError, match="mixup must be float, got str"):
        TrainConfig(model="lenet5", mixup="0.2")


def test_more_accumulation_than_batches_is_refused():
    with pytest.raises(InvalidValueError, match="more than the run's 4 batches: no update"):
        make_optimizer(TrainConfig(model="mlp", epochs=1, grad_accum_steps=8), steps_per_epoch=4)


# --- The recipes of ConvNeXt and ViT: the weight-decay mask, warm-up start, clipping --------

# What decays: the kernels of convolutions, dense layers and attention projections, nothing
# else, whatever the layer kind. One small model per kind of layer in the zoo: batch norm and
# convolutions without bias (resnet20), trainable subsampling coefficients (lenet5_1998),
# biased convolutions and dense layers (alexnet_torchvision), layer norm, layer scale and
# depthwise convolutions (ConvNeXt), class token, position embeddings and attention (ViT).
DECAYED = {"kernel", "qkv_kernel", "out_kernel"}
MASK_MODELS = {
    "resnet20": {},
    "lenet5_1998": {},
    "alexnet_torchvision": {"hidden": 16},
    "convnext_tiny": {"widths": (8, 16, 24, 32), "stage_sizes": (1, 1, 1, 1)},
    "vit_b_16": {"num_layers": 1, "num_heads": 2, "hidden_dim": 8, "mlp_dim": 16},
}


@pytest.mark.parametrize("name", MASK_MODELS)
def test_weight_decay_reaches_kernels_only_in_every_kind_of_layer(name):
    from zoo.training.state import decay_mask

    model = zoo.create_model(name, **MASK_MODELS[name])
    x = jax.ShapeDtypeStruct((1, *zoo.model_info(name).input_shape), jnp.float32)
    params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)["params"]
    mask = decay_mask(params)
    leaves = jax.tree_util.tree_flatten_with_path(mask)[0]
    assert leaves and all(decays == (path[-1].key in DECAYED) for path, decays in leaves)
    names = {path[-1].key for path, _ in leaves}
    if name == "vit_b_16":
        assert {"token", "embedding", "qkv_kernel", "out_kernel", "scale"} <= names
    if name == "convnext_tiny":
        assert {"gamma", "scale", "bias", "kernel"} <= names


def test_adamw_leaves_a_vits_tokens_and_scales_to_their_gradients():
    config = TrainConfig(model="vit_b_16", optimizer="adamw", lr=0.1, weight_decay=0.5, epochs=1)
    tx = make_optimizer(config, steps_per_epoch=10)
    params = {
        "class_token": {"token": jnp.ones((1, 1, 4))},
        "pos_embedding": {"embedding": jnp.ones((1, 5, 4))},
        "layer_scale": {"gamma": jnp.ones(4)},
        "attention": {"qkv_kernel": jnp.ones((4, 12)), "qkv_bias": jnp.ones(12)},
    }
    zeros = jax.tree.map(jnp.zeros_like, params)
    state = tx.init(params)
    for _ in range(3):  # past the first step, where the warm-up's learning rate is 0
        updates, state = jax.jit(tx.update)(zeros, state, params)
    changed = jax.tree.map(lambda u: bool(jnp.any(u != 0)), updates)
    assert changed == {
        "class_token": {"token": False},
        "pos_embedding": {"embedding": False},
        "layer_scale": {"gamma": False},
        "attention": {"qkv_kernel": True, "qkv_bias": False},
    }


@pytest.mark.parametrize("schedule", ["cosine", "linear", "step"])
def test_warm_up_starts_at_its_factor_of_the_learning_rate(schedule):
    config = TrainConfig(
        model="unused", lr=1.0, epochs=10, warmup_epochs=2, warmup_start_factor=0.01,
        schedule=schedule,
    )  # fmt: skip
    fn = jax.jit(learning_rate_schedule(config, 10))
    values = [float(fn(s)) for s in (0, 10, 20)]
    assert values == pytest.approx([0.01, 0.505, 1.0])


def test_clipping_scales_the_gradient_to_the_global_norm():
    config = TrainConfig(
        model="unused", lr=1.0, momentum=0.0, weight_decay=0.0, epochs=1, clip_grad_norm=1.0
    )
    tx = make_optimizer(config, steps_per_epoch=1)
    params = {"a": jnp.zeros(3), "b": jnp.zeros(4)}
    grads = {"a": jnp.full(3, 3.0), "b": jnp.full(4, 4.0)}  # norm sqrt(27 + 64)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    norm = optax.tree.norm(updates)
    assert float(norm) == pytest.approx(float(learning_rate_schedule(config, 1)(0)), abs=1e-6)
    small = {"a": jnp.full(3, 0.1), "b": jnp.zeros(4)}
    unclipped, _ = jax.jit(tx.update)(small, tx.init(params), params)
    np.testing.assert_allclose(unclipped["a"], -small["a"] * learning_rate_schedule(config, 1)(0))


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"warmup_start_factor": 1.5}, r"warmup_start_factor must be in \[0, 1\]"),
        (
            {"warmup_start_factor": 0.1, "schedule": "onecycle", "warmup_epochs": 1},
            "warmup_start_factor does not apply to schedule 'onecycle'",
        ),
        ({"clip_grad_norm": 0.0}, "clip_grad_norm must be positive"),
    ],
)
def test_recipe_settings_of_the_transformer_era_are_checked(settings, message):
    with pytest.raises(InvalidValueError, match=message):
        resolve({"model": "mlp", **settings})


def test_convnext_and_vit_presets_are_torchvisions_recipes():
    convnext = resolve({"model": "convnext_small"})
    assert (convnext.optimizer, convnext.lr, convnext.weight_decay) == ("adamw", 1e-3, 0.05)
    assert (convnext.epochs, convnext.batch_size, convnext.warmup_epochs) == (600, 1024, 5.0)
    assert (convnext.mixup, convnext.cutmix, convnext.label_smoothing) == (0.2, 1.0, 0.1)
    vit = resolve({"model": "vit_b_16", "batch_size": 64})
    assert (vit.optimizer, vit.lr, vit.weight_decay, vit.clip_grad_norm) == (
        "adamw",
        3e-3,
        0.3,
        1.0,
    )
    assert (vit.warmup_epochs, vit.warmup_start_factor, vit.batch_size) == (30.0, 0.033, 64)
    assert resolve({"model": "vit_l_16"}).optimizer == "sgd"
