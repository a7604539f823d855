"""ConvNeXt and the Vision Transformer beyond the registry-wide checks: other input sizes,
feature maps, stochastic depth and dropout, new heads, fine-tuning at another size, export,
and the attention op. Toy configurations of the registered models (same classes, same code)
where a real pass runs; the full-size ones through `jax.eval_shape`. Parity with torchvision
and timm is in tests/test_torchvision_parity.py."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo import hub, ops
from zoo.export import custom_calls
from zoo.features import extract_features, feature_info
from zoo.models.heads import replace_head
from zoo.models.layers import resample_position_embedding
from zoo.summary import summary
from zoo.training.config import TrainConfig
from zoo.training.finetune import start_from
from zoo.training.state import create_train_state, make_optimizer

RNGS = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
# vit_b_16's and convnext_tiny's classes at toy widths and depths: a real pass in a second.
TOY_VIT = {"num_layers": 2, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32, "patch_size": 8}
TOY_CONVNEXT = {"widths": (8, 16, 24, 32), "stage_sizes": (1, 1, 2, 1)}


def toy_vit(**config):
    return zoo.create_model("vit_b_16", **{**TOY_VIT, "input_size": (32, 32), **config})


def toy_convnext(**config):
    return zoo.create_model("convnext_tiny", **{**TOY_CONVNEXT, **config})


def images(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape)


def test_published_mac_counts():
    # torchvision's `_ops` (GMACs, as fvcore counts convolutions and linear layers) plus, for
    # ViT, the two attention matmuls (fvcore does not count scaled_dot_product_attention).
    macs = {name: summary(name).total_macs for name in zoo.list_models("convnext*")}
    macs |= {name: summary(name).total_macs for name in zoo.list_models("vit*")}
    assert macs == {
        "convnext_tiny": 4_455_531_264,
        "convnext_small": 8_683_712_256,
        "convnext_base": 15_354_729_472,
        "convnext_large": 34_361_433_600,
        "vit_b_16": 17_563_828_224,
        "vit_b_32": 4_409_186_304,
        "vit_l_16": 61_554_712_576,
    }
    attention = next(row for row in summary("vit_b_16").layers if row.kind == "attention")
    length, dim = 197, 768
    assert attention.params == 4 * dim * dim + 4 * dim
    assert attention.macs == 4 * length * dim * dim + 2 * length * length * dim


@pytest.mark.parametrize("size", [(224, 224), (160, 96)])
def test_vit_b_16_takes_any_size_with_its_block_maps_at_one_sixteenth(size):
    model = zoo.create_model("vit_b_16")
    x = jax.ShapeDtypeStruct((2, *size, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(RNGS, x), x)
    logits = jax.eval_shape(model.apply, variables, x)
    assert logits.shape == (2, 1000)
    # The parameters are the design size's whatever the input: the embeddings are resampled.
    assert variables["params"]["pos_embedding"]["embedding"].shape == (1, 197, 768)
    features = jax.eval_shape(
        lambda v, x: extract_features(model, v, x, stages=("block3", "block11")), variables, x
    )
    grid = (size[0] // 16, size[1] // 16)
    assert {k: v.shape for k, v in features.items()} == {
        "block3": (2, *grid, 768),
        "block11": (2, *grid, 768),
    }
    info = feature_info("vit_b_16", (*size, 3))
    assert [s.stage for s in info] == [f"block{i}" for i in range(12)]
    assert {(s.channels, s.reduction, s.shape) for s in info} == {(768, 16, (*grid, 768))}


def test_convnext_stages_are_timms():
    info = feature_info("convnext_tiny", (96, 64, 3))
    assert [(s.stage, s.module, s.channels, s.reduction) for s in info] == [
        ("stage1", "stage1_block2", 96, 4),
        ("stage2", "stage2_block2", 192, 8),
        ("stage3", "stage3_block8", 384, 16),
        ("stage4", "stage4_block2", 768, 32),
    ]
    assert info[-1].shape == (3, 2, 768)


def test_the_summary_at_another_size_keeps_the_design_sizes_embeddings():
    table = summary("vit_b_16", (48, 40, 3), **TOY_VIT, input_size=(32, 32))
    rows = {row.name: row for row in table.layers}
    assert rows["pos_embedding"].params == (1 + 4 * 4) * 16  # the 32x32 design's 4x4 grid
    assert rows["block1_map"].output_shape == (6, 5, 16)  # the 48x40 input's grid


def test_headless_vit_returns_the_normalised_class_token():
    model = toy_vit()
    x = images((2, 32, 32, 3))
    variables = model.init(RNGS, x)
    _, state = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=True))(variables, x)
    norm_output = state["intermediates"]["norm"]["__call__"][0]
    headless, kept = replace_head(model, variables, num_classes=0, key=jax.random.key(3))
    chex.assert_trees_all_close(jax.jit(headless.apply)(kept, x), norm_output[:, 0])


@pytest.mark.parametrize(
    ("make", "features"), [(toy_vit, 16), (toy_convnext, 32)], ids=["vit", "convnext"]
)
def test_replace_head_keeps_the_backbone(make, features):
    model = make()
    x = images((2, 32, 32, 3))
    variables = model.init(RNGS, x)
    new, replaced = replace_head(model, variables, num_classes=5, key=jax.random.key(7))
    assert replaced["params"]["head"]["kernel"].shape == (features, 5)
    backbone = {k: v for k, v in variables["params"].items() if k != "head"}
    kept = {k: v for k, v in replaced["params"].items() if k != "head"}
    chex.assert_trees_all_equal(kept, backbone)
    assert jax.eval_shape(new.apply, replaced, x).shape == (2, 5)


def block_rates(model: nn.Module) -> dict[str, float]:
    """Each block's drop_path_rate, as the model builds its blocks (an abstract init)."""
    rates = {}

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and hasattr(context.module, "drop_path_rate"):
            rates["/".join(context.module.path)] = context.module.drop_path_rate
        return next_fun(*args, **kwargs)

    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda x: model.init(RNGS, x), x)
    return rates


def test_drop_path_rates_rise_linearly_over_the_blocks():
    rates = block_rates(zoo.create_model("vit_b_16", drop_path_rate=0.1))
    expected = np.linspace(0.0, 0.1, 12)  # timm's torch.linspace(0, rate, depth)
    np.testing.assert_allclose([rates[f"block{i}"] for i in range(12)], expected, atol=1e-12)
    # torchvision's default for convnext_tiny, 0.1, as its rate * block / (blocks - 1).
    rates = block_rates(zoo.create_model("convnext_tiny"))
    blocks = [rates[f"stage{s}_block{b}"] for s, n in enumerate((3, 3, 9, 3), 1) for b in range(n)]
    np.testing.assert_allclose(blocks, [0.1 * i / 17 for i in range(18)], atol=1e-12)
    assert rates[""] == 0.1  # the model's own field


@pytest.mark.parametrize(
    ("make", "rate"),
    [(toy_vit, "drop_path_rate"), (toy_vit, "dropout_rate"), (toy_convnext, "drop_path_rate")],
    ids=["vit-drop-path", "vit-dropout", "convnext-drop-path"],
)
def test_stochastic_layers_act_in_training_only(make, rate):
    model = make(num_classes=0, **{rate: 0.5})  # ViT's head starts at zero: read its features
    plain = model.clone(**{rate: 0.0})
    x = images((4, 32, 32, 3))
    variables = model.init(RNGS, x)

    @jax.jit
    def outputs(one, two):
        def train(module, key):
            return module.apply(variables, x, train=True, rngs={"dropout": key})

        return train(model, one), train(model, two), train(plain, one), model.apply(variables, x)

    first, second, plain_train, evaluated = outputs(jax.random.key(1), jax.random.key(2))
    assert not np.allclose(first, second)  # the keys drop different examples or units
    chex.assert_trees_all_close(plain_train, evaluated)  # at rate 0 training is inference


def test_fine_tuning_a_vit_at_another_size_resamples_its_position_embeddings(tmp_path):
    source = toy_vit(num_classes=10)
    variables = source.init(RNGS, images((1, 32, 32, 3)))
    hub.save(
        "toy-vit",
        model_name="vit_b_16",
        model_config={**TOY_VIT, "input_size": (32, 32), "num_classes": 10},
        variables=variables,
        step=1,
        registry=tmp_path,
    )
    target = toy_vit(num_classes=3, input_size=(48, 48))
    optimizer = make_optimizer(TrainConfig(model="vit_b_16", epochs=1), steps_per_epoch=1)
    fresh = create_train_state(target, optimizer, (48, 48, 3), jax.random.key(5))
    init = start_from(fresh, "toy-vit", num_classes=3, registry=str(tmp_path), model=target)
    loaded = init.state.params
    np.testing.assert_allclose(
        loaded["pos_embedding"]["embedding"],
        resample_position_embedding(
            variables["params"]["pos_embedding"]["embedding"], (4, 4), (6, 6)
        ),
    )
    chex.assert_trees_all_equal(loaded["block1"], variables["params"]["block1"])
    assert init.source["reinitialised"] == ["params/head/bias", "params/head/kernel"]


def test_a_vit_exports_without_custom_calls():
    model = toy_vit()
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(RNGS, x), x)
    with ops.portable():
        exported = jax.export.export(jax.jit(model.apply), platforms=("cpu", "cuda", "tpu"))(
            variables, x
        )
    assert custom_calls(exported) == []


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_attention_equals_jax_nn_dot_product_attention(dtype):
    q, k, v = (images((2, 9, 3, 8), seed).astype(dtype) for seed in range(3))

    def value_and_grads(attention):
        def loss(*qkv):
            return jnp.sum(jnp.sin(attention(*qkv).astype(jnp.float32)))

        return attention(q, k, v), jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    ours, theirs = jax.jit(
        lambda: (
            value_and_grads(ops.dot_product_attention),
            value_and_grads(jax.nn.dot_product_attention),
        )
    )()
    tolerance = 1e-6 if dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(np.float32(ours[0]), np.float32(theirs[0]), atol=tolerance)
    for mine, reference in zip(ours[1], theirs[1], strict=True):
        np.testing.assert_allclose(np.float32(mine), np.float32(reference), atol=10 * tolerance)
