"""Feature extraction: every CNN's stages, held against the analytic summary and a manual apply.

Shapes go through `jax.eval_shape` (no compile, no memory), so every registered CNN is covered;
values are checked on the small models, and each stage is shown to be what the next layer eats.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_models import REPEATED_VARIANTS

import zoo
from zoo.features import NoFeatureStagesError, extract_features, feature_info, feature_stages
from zoo.models.resnet import BasicBlock

ALL_MODELS = zoo.list_models()
RNGS = {"params": jax.random.key(0), "dropout": jax.random.key(1)}


def is_spatial(name: str) -> bool:
    """Whether the network has any (H, W, C) map, i.e. whether it has features to extract."""
    return any(len(layer.output_shape) == 3 for layer in zoo.summary(name).layers)


CNNS = [name for name in ALL_MODELS if is_spatial(name)]


def abstract_features(name, input_shape, **overrides):
    model = zoo.create_model(name, **overrides)
    x = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(RNGS, x, train=False), x)
    return jax.eval_shape(lambda v, x: extract_features(model, v, x), variables, x)


def real_model(name, input_shape, seed=0, **overrides):
    """A model, inputs, and variables whose batch statistics come from real activations."""
    model = zoo.create_model(name, **overrides)
    x = jax.random.normal(jax.random.key(seed), (2, *input_shape))
    variables = model.init(RNGS, x, train=False)
    if "batch_stats" in variables:
        # Non-trivial statistics, so that a stage taken before or after its norm would differ.
        _, updates = model.apply(variables, x * 2 + 1, train=True, mutable=["batch_stats"])
        variables = {**variables, **updates}
    return model, variables, x


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_spatial_model_has_a_stage_table(name):
    if is_spatial(name):
        assert list(feature_stages(name)), name
    else:
        with pytest.raises(NoFeatureStagesError, match="has no feature stages"):
            feature_stages(name)


@pytest.mark.parametrize("name", [name for name in CNNS if name not in REPEATED_VARIANTS])
def test_extracted_shapes_equal_the_analytic_summary(name):
    info = zoo.model_info(name)
    features = abstract_features(name, info.input_shape)
    stages = feature_info(name)
    # eval_shape, like jit, returns the dict with sorted keys.
    assert sorted(features) == sorted(stage.stage for stage in stages)
    assert [stage.stage for stage in stages] == list(feature_stages(name))
    for stage in stages:
        chex.assert_shape(features[stage.stage], (2, *stage.shape))
        assert features[stage.stage].dtype == jnp.float32
        assert stage.channels == stage.shape[-1]


@pytest.mark.parametrize(
    ("name", "input_shape"),
    [("resnet18", (64, 96, 3)), ("alexnet_torchvision", (100, 80, 3)), ("resnet20", (40, 40, 3))],
)
def test_flexible_models_follow_the_summary_at_other_sizes(name, input_shape):
    features = abstract_features(name, input_shape)
    for stage in feature_info(name, input_shape):
        chex.assert_shape(features[stage.stage], (2, *stage.shape))


def mobile_stages(*channels: int) -> dict[str, tuple[int, int]]:
    return {f"stride{2**i}": (c, 2**i) for i, c in enumerate(channels, 1)}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "resnet50",
            {
                "stem": (64, 4),
                "stage1": (256, 4),
                "stage2": (512, 8),
                "stage3": (1024, 16),
                "stage4": (2048, 32),
            },
        ),
        (
            "alexnet_torchvision",
            {
                "pool1": (64, 8),
                "pool2": (192, 16),
                "conv3": (384, 16),
                "conv4": (256, 16),
                "pool5": (256, 32),
            },
        ),
        ("resnet20", {"stem": (16, 1), "stage1": (16, 1), "stage2": (32, 2), "stage3": (64, 4)}),
        ("lenet5", {"c1": (6, 1), "s2": (6, 2), "c3": (16, 2), "s4": (16, 4)}),
        # The mobile networks: timm's `feature_info` channels at strides 2 to 32.
        ("mobilenet_v2", mobile_stages(16, 24, 32, 96, 320)),
        ("mobilenet_v3_large", mobile_stages(16, 24, 40, 112, 960)),
        ("mobilenet_v3_small", mobile_stages(16, 16, 24, 48, 576)),
        ("efficientnet_b0", mobile_stages(16, 24, 40, 112, 320)),
        ("efficientnet_b7", mobile_stages(32, 48, 80, 224, 640)),
    ],
)
def test_channels_and_reductions_are_the_known_ones(name, expected):
    assert {s.stage: (s.channels, s.reduction) for s in feature_info(name)} == expected


def test_stages_follow_the_config():
    assert feature_stages("resnet18", stage_sizes=(1, 3)) == {
        "stem": "stem_pool",
        "stage1": "stage1_block0",
        "stage2": "stage2_block2",
    }
    model = zoo.create_model("resnet20", stage_sizes=(2, 2, 4))
    assert feature_stages(model)["stage3"] == "stage3_block3"


@pytest.mark.parametrize(
    ("name", "input_shape"),
    [("lenet5", (32, 32, 1)), ("lenet5_1998", (32, 32, 1)), ("resnet20", (32, 32, 3))],
)
def test_features_equal_a_manual_apply(name, input_shape):
    model, variables, x = real_model(name, input_shape)
    _, state = model.apply(variables, x, train=False, capture_intermediates=True)
    everything = state["intermediates"]
    features = jax.jit(lambda v, x: extract_features(model, v, x))(variables, x)
    for stage in zoo.features.stages_of(model):
        (output,) = everything[stage.module]["__call__"]
        if stage.activation is not None:
            output = stage.activation(output)
        # Jitted against eager: XLA may fuse (and so round) differently, at float32 precision.
        chex.assert_trees_all_close(features[stage.name], output, atol=1e-5, rtol=1e-5)


def test_each_stage_is_the_input_of_the_next_layer():
    # The stages that apply an activation themselves: feeding them on must give the next one.
    model, variables, x = real_model("resnet20", (32, 32, 3), stage_sizes=(1, 1, 1))
    features = extract_features(model, variables, x)
    block = BasicBlock(16, shortcut="zero_pad")
    block_vars = {c: variables[c]["stage1_block0"] for c in ("params", "batch_stats")}
    chex.assert_trees_all_close(
        block.apply(block_vars, features["stem"]), features["stage1"], atol=1e-5
    )
    assert float(jnp.min(features["stem"])) == 0.0  # Post-relu, unlike stem_bn's own output.

    model, variables, x = real_model("lenet5", (32, 32, 1))
    features = extract_features(model, variables, x)
    chex.assert_trees_all_close(nn.avg_pool(features["c1"], (2, 2), (2, 2)), features["s2"])

    model, variables, x = real_model("alexnet_torchvision", (63, 63, 3))
    features = extract_features(model, variables, x)
    conv4 = nn.Conv(256, (3, 3), padding=((1, 1), (1, 1)))
    after = conv4.apply({"params": variables["params"]["conv4"]}, features["conv3"])
    chex.assert_trees_all_close(nn.relu(after), features["conv4"], atol=1e-5)


def test_a_subset_of_stages_comes_in_network_order():
    model, variables, x = real_model("lenet5", (32, 32, 1))
    features = extract_features(model, variables, x, stages=["s4", "c1"])
    assert list(features) == ["c1", "s4"]
    everything = extract_features(model, variables, x)
    np.testing.assert_array_equal(features["s4"], everything["s4"])


def test_unknown_stages_and_models_without_stages_are_clear_errors():
    model, variables, x = real_model("lenet5", (32, 32, 1))
    with pytest.raises(ValueError, match=r"unknown stage\(s\) 'stage9'; .* c1, s2, c3, s4"):
        extract_features(model, variables, x, stages=["stage9"])
    with pytest.raises(NoFeatureStagesError, match="MLP has no feature stages"):
        feature_info("mlp")

    class NewNet(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Conv(4, (3, 3))(x)

    with pytest.raises(NoFeatureStagesError, match="NewNet has no feature stages"):
        feature_stages(NewNet())


def test_a_backbone_trains_through_its_features():
    model, variables, x = real_model("resnet20", (32, 32, 3), stage_sizes=(1, 1, 1))

    def loss(params):
        features, updates = extract_features(
            model, {**variables, "params": params}, x, stages=["stage2"], train=True
        )
        return jnp.mean(features["stage2"] ** 2), updates

    (value, updates), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    assert float(value) > 0
    # Gradients reach every layer up to stage 2 and nothing after it.
    assert float(jnp.abs(grads["stem_conv"]["kernel"]).max()) > 0
    assert float(jnp.abs(grads["stage2_block0"]["conv2"]["kernel"]).max()) > 0
    assert float(jnp.abs(grads["stage3_block0"]["conv1"]["kernel"]).max()) == 0
    # The batch statistics are train mode's: those of a full training-mode apply.
    _, expected = model.apply(variables, x, train=True, mutable=["batch_stats"])
    chex.assert_trees_all_close(updates, expected, atol=1e-6)
    assert not np.allclose(
        updates["batch_stats"]["stem_bn"]["mean"], variables["batch_stats"]["stem_bn"]["mean"]
    )
    # Train-mode features normalise with the batch, not the running statistics.
    inference = extract_features(model, variables, x, stages=["stage2"])
    trained, _ = extract_features(model, variables, x, stages=["stage2"], train=True)
    assert not np.allclose(inference["stage2"], trained["stage2"])
    features, none = extract_features(*real_model("lenet5", (32, 32, 1)), train=True)
    assert none == {} and set(features) == {"c1", "s2", "c3", "s4"}
