"""The mobile networks' layers: squeeze-and-excitation, the inverted residual block with its
depthwise convolution and stochastic depth, checked against their definitions; derivatives of
any order and NaNs through them, on the zoo's kernels. Small, so every check runs for real
(the registry-wide tests cover the full networks through `jax.eval_shape`)."""

from __future__ import annotations

import contextlib

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo import analytic, formulas, ops
from zoo.models.inverted_residual import InvertedResidual, make_divisible
from zoo.models.layers import SqueezeExcitation, stochastic_depth_rates

RNGS = {"params": jax.random.key(0), "dropout": jax.random.key(1)}


def test_squeeze_excitation_is_two_1x1_convolutions_with_biases():
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 12))
    se = SqueezeExcitation(4, activation="silu", scale_activation="hard_sigmoid")
    variables = se.init(RNGS, x)
    row = se.describe((5, 5, 12))
    assert (row.kind, row.output_shape) == ("squeeze_excitation", (5, 5, 12))
    assert row.params == formulas.squeeze_excitation_params(12, 4) == 12 * 4 + 4 + 4 * 12 + 12
    assert row.params == sum(p.size for p in jax.tree.leaves(variables))
    assert row.macs == formulas.squeeze_excitation_macs(12, 4) == 2 * 12 * 4
    fc1, fc2 = (variables["params"][name] for name in ("fc1", "fc2"))
    squeezed = x.mean((1, 2)) @ fc1["kernel"][0, 0] + fc1["bias"]
    scale = jax.nn.hard_sigmoid(jax.nn.silu(squeezed) @ fc2["kernel"][0, 0] + fc2["bias"])
    chex.assert_trees_all_close(se.apply(variables, x), x * scale[:, None, None], atol=1e-6)


def test_a_depthwise_convolution_is_one_filter_per_channel():
    assert formulas.depthwise_conv_params(32, 3, bias=False) == 32 * 9
    assert formulas.depthwise_conv_macs(7, 7, 32, (5, 5)) == 7 * 7 * 32 * 25
    conv = ops.Conv(8, (3, 3), 2, ((1, 1), (1, 1)), feature_group_count=8, use_bias=False)
    row = analytic.conv((9, 9, 8), 8, (3, 3), (2, 2), (1, 1), groups=8, bias=False)
    assert (row.kind, row.output_shape, row.params, row.macs) == (
        "depthwise_conv",
        (5, 5, 8),
        8 * 9,
        5 * 5 * 8 * 9,
    )
    # Channel 3's output reads channel 3 of the input only.
    x = jax.random.normal(jax.random.key(0), (1, 9, 9, 8))
    variables = conv.init(RNGS, x)
    changed = conv.apply(variables, x.at[..., 5].add(1.0))
    np.testing.assert_array_equal(conv.apply(variables, x)[..., 3], changed[..., 3])


def test_make_divisible_rounds_to_eight_and_never_below_ninety_percent():
    assert [make_divisible(v) for v in (32 * 1.1, 16 * 1.4, 12.0, 3.0, 40 * 1.8)] == [
        32,  # 35.2 rounds down to 32, within 90%
        24,  # 22.4 rounds up
        16,  # 12 rounds up (halfway)
        8,  # the minimum
        72,
    ]
    assert make_divisible(36.0) == 40  # halfway: up
    assert make_divisible(11.0) == 16  # 8 would lose more than 10%


def test_efficientnet_stochastic_depth_follows_torchvision():
    assert stochastic_depth_rates(4, 0.2) == pytest.approx((0.0, 0.05, 0.1, 0.15))
    model = zoo.create_model("efficientnet_b0")
    blocks = len(model.blocks())
    assert blocks == 16
    rates = stochastic_depth_rates(blocks, model.drop_path_rate)
    assert rates[-1] == pytest.approx(0.2 * 15 / 16)


class TinyMobileNet(nn.Module):
    """Every kind of block the three families have, on a small map."""

    @nn.compact
    def __call__(self, x, train=False):
        blocks = [
            dict(features=8, expanded=8, activation="relu6"),  # V2's first: no expansion
            dict(
                features=16,
                expanded=32,
                kernel_size=5,
                stride=2,
                activation="hard_swish",
                squeeze_channels=8,
                se_scale_activation="hard_sigmoid",
            ),  # V3's
            dict(
                features=16,
                expanded=48,
                activation="silu",
                squeeze_channels=4,
                se_activation="silu",
                drop_path_rate=0.5,
            ),  # EfficientNet's, residual
        ]
        for i, options in enumerate(blocks):
            x = InvertedResidual(**options, name=f"block{i}")(x, train)
        return x.mean((1, 2))


def tree_vdot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def random_like(tree, seed):
    leaves, structure = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        structure, [jax.random.normal(k, p.shape) for k, p in zip(keys, leaves, strict=True)]
    )


def test_the_blocks_differentiate_to_second_order_in_both_modes():
    """On the zoo's kernels in train mode (batch statistics, stochastic depth; a strided block
    with squeeze-and-excitation and hard-swish, then a residual one with SiLU): forward mode
    against reverse mode (<u, J t> = <J^T u, t>), and the Hessian-vector product forward over
    reverse against reverse over reverse, as the registry-wide test does for whole networks."""
    model = TinyMobileNet()
    x = jax.random.normal(jax.random.key(2), (2, 6, 6, 8))
    variables = model.init(RNGS, x)
    params = variables["params"]

    def outputs(params):
        out, _ = model.apply(
            {**variables, "params": params},
            x,
            train=True,
            rngs={"dropout": jax.random.key(3)},
            mutable=["batch_stats"],
        )
        return out

    def loss(params):
        return jnp.sum(jnp.tanh(outputs(params)))

    t = random_like(params, 4)
    out, j_t = jax.jit(lambda p, t: jax.jvp(outputs, (p,), (t,)))(params, t)
    u_out = jax.random.normal(jax.random.key(5), out.shape)
    (jt_u,) = jax.jit(lambda p, u: jax.vjp(outputs, p)[1](u))(params, u_out)
    np.testing.assert_allclose(jnp.vdot(u_out, j_t), tree_vdot(jt_u, t), rtol=1e-4)
    h_t = jax.jit(lambda p, t: jax.jvp(jax.grad(loss), (p,), (t,))[1])(params, t)
    reverse = jax.jit(jax.grad(lambda p, t: tree_vdot(jax.grad(loss)(p), t)))(params, t)
    scale = max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(h_t))
    chex.assert_trees_all_close(reverse, h_t, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("portable", [False, True], ids=["zoo-kernels", "xla-ops"])
def test_a_nan_reaches_the_outputs_of_its_image(portable):
    # Squeeze-and-excitation averages the map: a NaN pixel must not average away.
    model = TinyMobileNet()
    x = jax.random.normal(jax.random.key(2), (3, 8, 8, 8))
    x = x.at[1, 4, 4, 0].set(jnp.nan)
    variables = model.init(RNGS, x)
    with ops.portable() if portable else contextlib.nullcontext():
        evaluated = jax.jit(lambda v, x: model.apply(v, x))(variables, x)
    assert np.isnan(np.asarray(evaluated)).any(axis=1).tolist() == [False, True, False]


def test_stochastic_depth_drops_whole_examples_of_residual_blocks_in_training_only():
    block = InvertedResidual(8, 16, activation="silu", drop_path_rate=0.5)
    x = jax.random.normal(jax.random.key(0), (64, 4, 4, 8))
    variables = block.init(RNGS, x)

    def train(seed, module=block):
        out, _ = module.apply(
            variables, x, train=True, rngs={"dropout": jax.random.key(seed)}, mutable=True
        )
        return out

    residual = train(1, block.clone(drop_path_rate=0.0)) - x
    dropped = np.asarray(train(1) - x).reshape(64, -1)
    kept = np.all(np.isclose(dropped, 2 * np.asarray(residual).reshape(64, -1), atol=1e-5), 1)
    gone = np.all(dropped == 0, axis=1)
    assert (kept | gone).all() and 10 < gone.sum() < 54  # whole examples, about half
    assert not np.allclose(train(1), train(2))
    chex.assert_trees_all_equal(block.apply(variables, x), block.apply(variables, x))
    strided = InvertedResidual(8, 16, stride=2, drop_path_rate=0.5)  # no residual: never drops
    strided_vars = strided.init(RNGS, x)
    a, _ = strided.apply(
        strided_vars, x, train=True, rngs={"dropout": jax.random.key(1)}, mutable=True
    )
    b, _ = strided.apply(
        strided_vars, x, train=True, rngs={"dropout": jax.random.key(2)}, mutable=True
    )
    chex.assert_trees_all_equal(a, b)
