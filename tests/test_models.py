"""Every registered model, proven against the lecture's formulas and the published counts.

Parametrised over the whole registry, so a model is tested the moment it is registered: the
analytic summary (formulas only) must equal the real Flax variables and intermediate outputs
layer by layer, and the totals must equal the reference table. Big models go through
`jax.eval_shape`: no compile, no memory. The checks are functions (`check_*`), so a model
defined inside a test gets exactly the same ones (`test_a_model_defined_in_a_test_...`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import zoo
from zoo import ops
from zoo.analytic import NoAnalyticRuleError, smallest_square_input
from zoo.features import extract_features, feature_info, feature_stages
from zoo.models.base import ImageModel, Stage
from zoo.models.heads import replace_head
from zoo.models.layers import GlobalAvgPool, MaxPool
from zoo.summary import summary

ALL_MODELS = zoo.list_models()
# Real forward and backward passes for the models that compile in seconds on 2 cores.
SMALL_MODELS = [n for n in ALL_MODELS if summary(n).total_params < 300_000]

RNGS = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
# Deeper or wider variants of a family whose every kind of layer its smallest variant has (and
# walks through the same code): the proof against the formulas runs on every one of them, the
# checks that only walk a network again at other settings (headless, an input too small,
# another param_dtype, its feature maps) on the smallest, so the suite stays within its time.
REPEATED_VARIANTS = frozenset(
    {
        *("vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"),
        *("resnext101_32x8d", "resnext101_64x4d", "wide_resnet101_2"),
        *("densenet169", "densenet201", "densenet161"),
        *(f"efficientnet_b{i}" for i in range(1, 8)),
        *("convnext_small", "convnext_base", "convnext_large"),
        *("vit_b_32", "vit_l_16"),
    }
)
WALKED_MODELS = [n for n in ALL_MODELS if n not in REPEATED_VARIANTS]


def init_abstract(model, input_shape, batch=2):
    """(output, variables incl. intermediates) as shapes only."""
    x = jax.ShapeDtypeStruct((batch, *input_shape), jnp.float32)
    return jax.eval_shape(
        lambda x: model.init_with_output(RNGS, x, train=False, capture_intermediates=True), x
    )


def params_by_layer(params, layers=()) -> dict[str, int]:
    """Parameters per layer: each leaf counts for the deepest of `layers` (module paths) that
    holds it, else for its own module. A layer described as a whole (squeeze-and-excitation)
    keeps its parameters in submodules of its own."""
    counts: dict[str, int] = {}
    for path, leaf in flax.traverse_util.flatten_dict(params).items():
        holders = ["/".join(path[:i]) for i in range(len(path) - 1, 0, -1)]
        layer = next((h for h in holders if h in layers), holders[0])
        counts[layer] = counts.get(layer, 0) + int(np.prod(leaf.shape))
    return counts


def outputs_by_layer(intermediates) -> dict[str, jax.ShapeDtypeStruct]:
    return {
        "/".join(path[:-1]): value[0]
        for path, value in flax.traverse_util.flatten_dict(intermediates).items()
    }


EXPECTED_MODELS = [
    "logistic_regression",
    "mlp",
    "lenet5",
    "lenet5_1998",
    "alexnet",
    "alexnet_2012",
    "alexnet_torchvision",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "conv_autoencoder",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
    "googlenet",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "densenet121",
    "densenet169",
    "densenet201",
    "densenet161",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    *(f"efficientnet_b{i}" for i in range(8)),
    "convnext_tiny",
    "convnext_small",
    "convnext_base",
    "convnext_large",
    "vit_b_16",
    "vit_b_32",
    "vit_l_16",
]


def test_the_zoo_holds_every_network_of_the_issues():
    assert sorted(EXPECTED_MODELS) == ALL_MODELS


def check_formulas_match(name, **overrides):
    """Every analytic row equals the real variables and intermediates; totals equal the paper."""
    info = zoo.model_info(name)
    model = zoo.create_model(name, **overrides)
    table = summary(name, **overrides)
    logits, variables = init_abstract(model, info.input_shape)

    chex.assert_shape(logits, (2, *table.output_shape))
    analytic_params = {layer.name: layer.params for layer in table.layers if layer.params}
    layers = {layer.name for layer in table.layers}
    assert params_by_layer(variables["params"], layers) == analytic_params
    outputs = outputs_by_layer(variables["intermediates"])
    for layer in table.layers:
        chex.assert_shape(outputs[layer.name], (2, *layer.output_shape))
    total = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
    chex.assert_equal(total, table.total_params)
    if not overrides:
        assert table.output_shape == info.output_shape
    if info.reference_params is not None and not overrides:
        chex.assert_equal(total, info.reference_params)


def train_outputs(model, variables, params, x):
    """The model's train-mode outputs with `params` (dropout's key fixed, batch stats dropped)."""
    outputs, _ = model.apply(
        {**variables, "params": params},
        x,
        train=True,
        rngs={"dropout": jax.random.key(3)},
        mutable=["batch_stats"],
    )
    return outputs


def check_forward_and_gradients(name):
    """A real train-mode forward and backward pass: finite, with some non-zero gradient."""
    info = zoo.model_info(name)
    model = zoo.create_model(name)
    x = jax.random.normal(jax.random.key(2), (4, *info.input_shape))
    labels = jnp.arange(4) % info.num_classes
    variables = jax.jit(model.init)(RNGS, x)

    def loss(params):
        outputs = train_outputs(model, variables, params, x)
        if info.task == "reconstruction":
            return jnp.mean((outputs - x) ** 2)
        return -jnp.mean(jax.nn.log_softmax(outputs)[jnp.arange(4), labels])

    value, grads = jax.jit(jax.value_and_grad(loss))(variables["params"])
    chex.assert_tree_all_finite((value, grads))
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
    chex.assert_trees_all_equal_shapes(grads, variables["params"])


def check_features(name):
    """Extracted stages (abstract) have the shapes the analytic `feature_info` gives."""
    info = zoo.model_info(name)
    model = zoo.create_model(name)
    x = jax.ShapeDtypeStruct((2, *info.input_shape), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(RNGS, x, train=False), x)
    features = jax.eval_shape(lambda v, x: extract_features(model, v, x), variables, x)
    stages = feature_info(name)
    assert [stage.stage for stage in stages] == list(feature_stages(name))
    assert sorted(features) == sorted(stage.stage for stage in stages)
    for stage in stages:
        chex.assert_shape(features[stage.stage], (2, *stage.shape))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_formulas_match_the_initialised_model(name):
    check_formulas_match(name)


HEADED_MODELS = [n for n in ALL_MODELS if zoo.create_model(n).head_name is not None]


def test_every_classifier_has_a_head():
    assert set(ALL_MODELS) - set(HEADED_MODELS) == {"conv_autoencoder"}


@pytest.mark.parametrize(
    "name", [n for n in HEADED_MODELS if n not in {"logistic_regression", *REPEATED_VARIANTS}]
)
def test_num_classes_zero_gives_the_features_the_head_reads(name):
    check_formulas_match(name, num_classes=0)
    headless, full = summary(name, num_classes=0), summary(name)
    (features,) = headless.output_shape
    head = full.layers[-1]
    assert head.name == zoo.create_model(name).head_name
    assert [layer.name for layer in full.layers[:-1]] == [layer.name for layer in headless.layers]
    assert headless.total_params + head.params == full.total_params
    assert head.macs == features * full.output_shape[0]  # The head reads exactly those features.


def test_logistic_regression_has_no_features_to_return():
    with pytest.raises(ValueError, match="num_classes=0 needs a hidden layer"):
        zoo.create_model("logistic_regression", num_classes=0)


def test_replace_head_keeps_the_backbone_and_initialises_a_new_head():
    model = zoo.create_model("resnet20", stage_sizes=(1, 1, 1))
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    variables = model.init(RNGS, x)
    new, replaced = replace_head(model, variables, num_classes=5, key=jax.random.key(7))
    assert new.num_classes == 5 and replaced["params"]["fc"]["kernel"].shape == (64, 5)
    assert set(replaced["params"]) == set(variables["params"])
    backbone = {k: v for k, v in variables["params"].items() if k != "fc"}
    chex.assert_trees_all_equal(
        {k: v for k, v in replaced["params"].items() if k != "fc"}, backbone
    )
    chex.assert_trees_all_equal(replaced["batch_stats"], variables["batch_stats"])
    assert new.apply(replaced, x).shape == (2, 5)

    headless, kept = replace_head(model, variables, num_classes=0, key=jax.random.key(7))
    features = headless.apply(kept, x)
    _, state = model.apply(variables, x, capture_intermediates=True)
    chex.assert_trees_all_close(features, state["intermediates"]["pool"]["__call__"][0])
    assert "fc" not in kept["params"]
    with pytest.raises(TypeError, match="no classifier head"):
        replace_head("conv_autoencoder", {}, 3, jax.random.key(0))


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_forward_and_gradients_are_finite(name):
    check_forward_and_gradients(name)


# Every kind of zoo op: convolutions (lenet5), batch norm in training and the residual join
# (resnet20), max pooling (resnet18, at 32 x 32), grouped convolutions and dropout
# (alexnet_2012). Name: input size (None: the model's own).
AUTODIFF_MODELS = {**dict.fromkeys(SMALL_MODELS), "resnet18": 32, "alexnet_2012": None}


def random_like(tree, seed: int):
    leaves, structure = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        structure, [jax.random.normal(k, p.shape) for k, p in zip(keys, leaves, strict=True)]
    )


def tree_vdot(a, b) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.mark.parametrize("name", AUTODIFF_MODELS)
def test_every_model_differentiates_to_second_order_in_both_modes(name):
    """On the zoo's kernels (native ones where this CPU has them), in train mode: forward mode
    (`jax.jvp`) against reverse mode by the dot-product test <u, J t> = <J^T u, t>, and the
    Hessian-vector product of a scalar loss three ways: forward over reverse (`jvp` of
    `grad`), reverse over reverse (`grad` of <grad, t>), and its symmetry <u, H t> = <H u, t>.
    With the ops as `jax.custom_vjp`s over the kernels, all but the vjp raise."""
    info = zoo.model_info(name)
    size = AUTODIFF_MODELS[name]
    shape = info.input_shape if size is None else (size, size, info.input_shape[-1])
    model = zoo.create_model(name)
    x = jax.random.normal(jax.random.key(2), (2, *shape))
    variables = jax.jit(model.init)(RNGS, x)
    params = variables["params"]
    t, u = random_like(params, 4), random_like(params, 6)

    def outputs(params):
        return train_outputs(model, variables, params, x)

    def loss(params):
        return jnp.sum(jnp.tanh(outputs(params)))

    out, j_t = jax.jit(lambda p, t: jax.jvp(outputs, (p,), (t,)))(params, t)
    u_out = jax.random.normal(jax.random.key(5), out.shape)
    (jt_u,) = jax.jit(lambda p, u: jax.vjp(outputs, p)[1](u))(params, u_out)
    np.testing.assert_allclose(jnp.vdot(u_out, j_t), tree_vdot(jt_u, t), rtol=1e-4)

    hvp = jax.jit(lambda p, t: jax.jvp(jax.grad(loss), (p,), (t,))[1])
    reverse_hvp = jax.jit(jax.grad(lambda p, t: tree_vdot(jax.grad(loss)(p), t)))
    h_t = hvp(params, t)
    scale = max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(h_t))
    chex.assert_trees_all_close(reverse_hvp(params, t), h_t, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(tree_vdot(u, h_t), tree_vdot(hvp(params, u), t), rtol=1e-3)


@pytest.mark.parametrize("portable", [False, True], ids=["zoo-kernels", "xla-ops"])
@pytest.mark.parametrize("name", AUTODIFF_MODELS)
def test_a_nan_in_one_image_reaches_its_outputs_in_both_modes(name, portable):
    """A NaN stays a NaN through every layer, as IEEE arithmetic and `jax.nn.relu` define it: in
    eval mode the outputs of the image holding one have a NaN and the other images' none; in
    train mode (batch statistics mix the images) that image's have one. oneDNN's fused ReLU, and
    XLA:CPU's YNNPACK reductions of a ReLU (the global average pool), gave 0 for it: a NaN pixel
    vanished from a ResNet's outputs, and a diverged ResNet's outputs were finite."""
    info = zoo.model_info(name)
    size = AUTODIFF_MODELS[name]
    height, width, channels = info.input_shape if size is None else (size, size, 3)
    model = zoo.create_model(name)
    x = jax.random.normal(jax.random.key(2), (3, height, width, channels))
    x = x.at[1, height // 2, width // 2, 0].set(jnp.nan)
    variables = jax.jit(model.init)(RNGS, x)

    def images_with_a_nan(outputs) -> list[bool]:
        return np.isnan(np.asarray(outputs)).reshape(len(x), -1).any(axis=1).tolist()

    with ops.portable() if portable else contextlib.nullcontext():
        evaluated = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
        trained = jax.jit(train_outputs, static_argnums=0)(model, variables, variables["params"], x)
    assert images_with_a_nan(evaluated) == [False, True, False]
    assert images_with_a_nan(trained)[1]


def test_flexible_models_follow_the_formulas_at_other_sizes():
    for name, shape in [
        ("resnet18", (64, 96, 3)),
        ("alexnet_torchvision", (100, 80, 3)),
        ("resnet20", (40, 40, 3)),
    ]:
        table = summary(name, shape)
        _, variables = init_abstract(zoo.create_model(name), shape)
        outputs = outputs_by_layer(variables["intermediates"])
        for layer in table.layers:
            chex.assert_shape(outputs[layer.name], (2, *layer.output_shape))


@pytest.mark.parametrize("name", WALKED_MODELS)
def test_an_input_too_small_for_a_window_is_refused_before_compiling(name):
    info = zoo.model_info(name)
    model = zoo.create_model(name)
    side = smallest_square_input(model, info.input_shape)
    assert side <= min(info.input_shape[:2])  # The design size fits.
    if info.fixed_input_size or side == 1:
        return  # Nothing smaller is accepted, or nothing is too small.
    channels = info.input_shape[-1]
    small = (2, side - 1, side - 1, channels)
    with pytest.raises(zoo.errors.InvalidValueError) as error:
        jax.eval_shape(model.init, RNGS, jax.ShapeDtypeStruct(small, jnp.float32))
    assert f"at least {side}" in str(error.value) and str(small) in str(error.value)
    fits = jax.ShapeDtypeStruct((2, side, side + 5, channels), jnp.float32)
    jax.eval_shape(model.init, RNGS, fits)


def test_alexnet_torchvision_names_its_smallest_input():
    model = zoo.create_model("alexnet_torchvision")
    with pytest.raises(ValueError, match=r"at least 63, got shape \(2, 62, 62, 3\) \(pool5: "):
        jax.eval_shape(model.init, RNGS, jax.ShapeDtypeStruct((2, 62, 62, 3), jnp.float32))


def test_mac_counts_match_the_published_ones():
    # LeNet-5 ~0.42 M, ResNet-18 1,814 M, ResNet-50 4,089 M, ResNet-20 ~40.6 M MACs per image.
    assert summary("lenet5").total_macs == 416_520
    assert round(summary("resnet18").total_macs / 1e6) == 1814
    assert round(summary("resnet50").total_macs / 1e6) == 4089
    assert round(summary("resnet20").total_macs / 1e5) == 406
    # fvcore 0.1.5's count of the convolutions and dense layers of torchvision's models at
    # 224x224 (its batch norms and pools aside), which equals torchvision's published GFLOPS.
    fvcore = {
        "vgg11": 7_609_090_048,
        "vgg16_bn": 15_470_264_320,
        "googlenet": 1_498_376_192,
        "resnext50_32x4d": 4_230_479_872,
        "wide_resnet50_2": 11_398_021_120,
        "densenet121": 2_834_161_664,
        "densenet161": 7_727_907_072,
    }
    assert {name: summary(name).total_macs for name in fvcore} == fvcore


def test_batch_norm_statistics_update_in_training_and_are_used_in_eval():
    model = zoo.create_model("resnet20")
    x = jax.random.normal(jax.random.key(0), (8, 32, 32, 3)) * 3 + 1
    variables = model.init(RNGS, x, train=False)
    _, updated = model.apply(variables, x, train=True, mutable=["batch_stats"])
    before = variables["batch_stats"]["stem_bn"]["mean"]
    after = updated["batch_stats"]["stem_bn"]["mean"]
    assert not np.allclose(before, after)
    eval_old = model.apply(variables, x, train=False)
    eval_new = model.apply({**variables, **updated}, x, train=False)
    assert not np.allclose(eval_old, eval_new)


def test_dropout_is_active_only_in_training():
    model = zoo.create_model("alexnet_torchvision", num_classes=3, hidden=16)
    x = jax.random.normal(jax.random.key(0), (2, 63, 63, 3))
    variables = model.init(RNGS, x, train=False)
    chex.assert_trees_all_equal(model.apply(variables, x), model.apply(variables, x))
    a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(a, b)


@pytest.mark.parametrize("name", ["resnet20", "resnet18"])
def test_drop_path_drops_residual_branches_in_training_only(name):
    shape = (32, 32, 3)
    model = zoo.create_model(name, stage_sizes=(1, 1, 1), num_classes=4, drop_path_rate=0.5)
    plain = model.clone(drop_path_rate=0.0)
    x = jax.random.normal(jax.random.key(0), (4, *shape))
    variables = model.init(RNGS, x)

    def train(module, seed):
        outputs, _ = module.apply(
            variables, x, train=True, rngs={"dropout": jax.random.key(seed)}, mutable=True
        )
        return outputs

    assert not np.allclose(train(model, 1), train(model, 2))
    chex.assert_trees_all_equal(model.apply(variables, x), plain.apply(variables, x))
    chex.assert_trees_all_equal(train(plain, 1), train(plain, 2))


def test_drop_path_keeps_whole_examples_with_the_right_rate_and_scale():
    from zoo.models.layers import drop_path, drop_path_rates

    assert drop_path_rates(5, 0.2) == pytest.approx((0.0, 0.05, 0.1, 0.15, 0.2))
    kept = drop_path(jnp.ones((4000, 3, 3, 2)), 0.25, jax.random.key(0))
    per_example = np.asarray(kept).reshape(4000, -1)
    np.testing.assert_allclose(np.unique(per_example), [0.0, 1 / 0.75], rtol=1e-6)
    assert (per_example.min(1) == per_example.max(1)).all()  # All of an example, or none.
    assert abs(float(jnp.mean(kept)) - 1.0) < 0.05
    with pytest.raises(ValueError, match=r"drop_path_rate must be a number in \[0, 1\)"):
        zoo.create_model("resnet50", drop_path_rate=1.0)


def test_bfloat16_compute_keeps_float32_parameters():
    model = zoo.create_model("resnet20", dtype=jnp.bfloat16)
    logits, variables = init_abstract(model, (32, 32, 3))
    assert logits.dtype == jnp.bfloat16
    assert {p.dtype for p in jax.tree.leaves(variables["params"])} == {jnp.dtype("float32")}


@pytest.mark.parametrize("name", WALKED_MODELS)
def test_param_dtype_reaches_every_layer(name):
    model = zoo.create_model(name, param_dtype=jnp.bfloat16)
    _, variables = init_abstract(model, zoo.model_info(name).input_shape)
    assert {p.dtype for p in jax.tree.leaves(variables["params"])} == {jnp.dtype("bfloat16")}
    # Running statistics are float32 whatever the parameters are, like nn.BatchNorm's.
    assert {s.dtype for s in jax.tree.leaves(variables.get("batch_stats", {}))} <= {
        jnp.dtype("float32")
    }


def test_lenet5_1998_c3_follows_table_one():
    from zoo.models.lenet import C3_CONNECTIONS, PartialConv

    assert sum(map(len, C3_CONNECTIONS)) == 60
    model = zoo.create_model("lenet5_1998")
    x = jax.random.normal(jax.random.key(0), (1, 32, 32, 1))
    variables = model.init(RNGS, x)
    # C3 map 0 reads S2 maps 0, 1, 2 only: changing S2 map 3 must leave it alone.
    s2 = jax.random.normal(jax.random.key(1), (1, 14, 14, 6))
    conv = PartialConv(C3_CONNECTIONS)
    params = {"params": variables["params"]["c3"]}
    base = conv.apply(params, s2)
    changed = conv.apply(params, s2.at[..., 3].add(5.0))
    np.testing.assert_array_equal(base[..., 0], changed[..., 0])
    assert not np.allclose(base[..., 3], changed[..., 3])


def test_lenet5_1998_starts_with_an_unsaturated_softmax():
    # Summed 2x2 windows, C3's undercounted fan-in and unscaled RBF distances gave an untrained
    # network a cross-entropy of 17 (a saturated softmax), and a preset that stalled at 97%.
    model = zoo.create_model("lenet5_1998")
    x = jax.random.normal(jax.random.key(0), (256, 32, 32, 1))
    labels = jax.random.randint(jax.random.key(1), (256,), 0, 10)
    logits = model.apply(model.init(RNGS, x), x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    assert loss < 2 * np.log(10)


@contextlib.contextmanager
def registered(name, module, **registration):
    """`zoo.registry.register` for the duration of a test; unregistered afterwards."""
    zoo.registry.register(name, module, **registration)
    try:
        yield zoo.model_info(name)
    finally:
        zoo.registry.unregister(name)


class TinyNet(ImageModel):
    """A model as a user writes one: one module, its stages, and one `register` call."""

    num_classes: int = 3
    in_channels: int = 1
    input_size: tuple[int, int] = (12, 12)
    width: int = 4

    @nn.nowrap
    def feature_stages(self):
        return (Stage("conv", "conv", nn.relu), Stage("pool", "pool"))

    @nn.compact
    def __call__(self, x, train=False):
        self.check_input(x)
        x = nn.relu(nn.Conv(self.width, (3, 3), name="conv")(x))
        x = nn.BatchNorm(use_running_average=not train, name="bn")(MaxPool(2, 2, name="pool")(x))
        return nn.Dense(self.num_classes, name="head")(GlobalAvgPool(name="gap")(x))


def test_a_model_defined_in_a_test_gets_the_whole_toolkit():
    # conv 4 * 9 + 4, batch norm 2 * 4, head 4 * 3 + 3.
    with registered(
        "tiny_net", TinyNet, paper="this test", description="a test model", reference_params=63
    ):
        assert "tiny_net" in zoo.list_models()
        assert zoo.create_model("tiny_net", width=8).width == 8
        table = summary("tiny_net")
        assert [layer.name for layer in table.layers] == ["conv", "pool", "bn", "gap", "head"]
        assert table.layers[0].output_shape == (12, 12, 4)  # Flax's default 'SAME' padding.
        assert table.total_macs == 12 * 12 * 4 * 9 + 4 * 3
        assert summary("tiny_net", (20, 16, 1)).layers[1].output_shape == (10, 8, 4)
        check_formulas_match("tiny_net")
        check_forward_and_gradients("tiny_net")
        check_features("tiny_net")
        assert {s.stage: s.reduction for s in feature_info("tiny_net")} == {"conv": 1, "pool": 2}
    assert "tiny_net" not in zoo.list_models()
    with pytest.raises(zoo.UnknownModelError):
        zoo.create_model("tiny_net")


def readme_model_example() -> str:
    """The README's "Adding a model" example, as it is written there."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("## Adding a model") :]
    start = section.index("```python\n") + len("```python\n")
    return section[start : section.index("```\n", start)]


def test_the_readme_model_with_a_layer_of_its_own_gets_the_whole_toolkit(capsys):
    try:
        # As a script of its own runs it: without this module's `from __future__ import ...`.
        exec(compile(readme_model_example(), "README.md", "exec", dont_inherit=True), {})
        assert "matches the published count 378" in capsys.readouterr().out
        layers = [layer.name for layer in summary("tinynet").layers]
        assert layers == ["conv", "bn", "pool", "scale", "gap", "fc"]
        check_formulas_match("tinynet")
        check_forward_and_gradients("tinynet")
        check_features("tinynet")
        assert zoo.create_model("tinynet", num_classes=0).apply(
            zoo.create_model("tinynet", num_classes=0).init(RNGS, jnp.ones((1, 28, 28, 1))),
            jnp.ones((1, 28, 28, 1)),
        ).shape == (1, 16)
    finally:
        if "tinynet" in zoo.list_models():  # else the example failed: keep its own error
            zoo.registry.unregister("tinynet")


def test_a_layer_without_a_rule_is_named():
    class Scale(nn.Module):
        @nn.compact
        def __call__(self, x):
            return x * self.param("scale", nn.initializers.ones, (x.shape[-1],))

    class Scaled(TinyNet):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(self.num_classes, name="head")(Scale(name="scale")(x).mean((1, 2)))

    with pytest.raises(NoAnalyticRuleError, match="scale: Scale creates parameters"):
        zoo.analytic.describe(Scaled(), (12, 12, 1))


def test_a_layer_without_a_rule_stops_only_the_summary():
    # The README's promise: a layer with parameters and no `describe` stops `zoo summary` and
    # nothing else. `check_input` described the model on every trace, so the forward pass
    # failed too.
    class Scale(nn.Module):
        @nn.compact
        def __call__(self, x):
            return x * self.param("scale", nn.initializers.ones, (x.shape[-1],))

    class ScaledNet(TinyNet):
        @nn.compact
        def __call__(self, x, train=False):
            self.check_input(x)
            x = Scale(name="scale")(nn.Conv(self.width, (3, 3), name="conv")(x))
            return nn.Dense(self.num_classes, name="head")(GlobalAvgPool(name="gap")(x))

    with registered("scaled_net", ScaledNet, paper="this test", description="no rule"):
        model = zoo.create_model("scaled_net")
        x = jnp.ones((2, 12, 12, 1))
        variables = model.init(RNGS, x)
        logits = jax.jit(model.apply)(variables, x)
        chex.assert_shape(logits, (2, 3))
        grads = jax.grad(lambda p: model.apply({"params": p}, x).sum())(variables["params"])
        assert float(jnp.abs(grads["scale"]["scale"]).sum()) > 0
        with pytest.raises(ValueError, match="expects NHWC images of shape"):
            model.init(RNGS, jnp.ones((2, 12, 12, 3)))  # the channel check still holds
        with pytest.raises(NoAnalyticRuleError, match="scale: Scale creates parameters"):
            summary("scaled_net")


# --- initial values: Flax's init with JAX's initializers, bit for bit ---------------------------

INIT_CASES = [("lenet5", {}), ("resnet20", {"stage_sizes": (1, 1, 1)}), ("mlp", {})]


@pytest.mark.parametrize(("name", "config"), INIT_CASES, ids=[n for n, _ in INIT_CASES])
def test_init_draws_jaxs_own_initial_values(name, config, monkeypatch):
    # The zoo's layers draw their kernels in chunks (`zoo.ops.initializers`), one compiled
    # program for every shape; the values are those of JAX's own draw of each shape.
    model = zoo.create_model(name, **config)
    x = jnp.ones((2, *zoo.model_info(name).input_shape))
    ours = model.init(RNGS, x)
    monkeypatch.setattr(zoo.ops.initializers, "_chunked_draw", lambda *_: None)
    theirs = model.init(RNGS, x)
    chex.assert_trees_all_equal(ours, theirs)
