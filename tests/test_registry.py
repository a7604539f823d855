"""Creating models by name, and the errors a user gets for bad names, arguments and inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo


def test_list_models_filters_like_timm():
    assert zoo.list_models("resnet1*") == ["resnet101", "resnet110", "resnet152", "resnet18"]
    assert zoo.list_models("lenet*") == ["lenet5", "lenet5_1998"]
    assert zoo.list_models("nothing*") == []


def test_create_model_applies_overrides():
    model = zoo.create_model("resnet18", num_classes=10)
    assert model.num_classes == 10 and model.stage_sizes == (2, 2, 2, 2)
    # Lists (from JSON or a config file) become the tuples the module declares.
    assert zoo.create_model("mlp", hidden=[8, 4]).hidden == (8, 4)
    assert zoo.create_model("mlp", hidden=[8, 4]) == zoo.create_model("mlp", hidden=(8, 4))


def test_unknown_name_suggests_close_matches():
    with pytest.raises(KeyError) as error:
        zoo.create_model("resnet51")
    assert isinstance(error.value, zoo.UnknownModelError)
    assert "resnet50" in str(error.value) and "did you mean" in str(error.value)
    with pytest.raises(zoo.UnknownModelError, match="known models: alexnet"):
        zoo.model_info("zzzzzz")


@pytest.mark.parametrize(
    ("overrides", "error", "names"),
    [
        ({"num_classes": -1}, ValueError, "num_classes"),  # 0 is headless: see test_models.
        ({"num_classes": 2.5}, ValueError, "num_classes"),
        ({"block": "huge"}, ValueError, "block"),
        ({"stage_sizes": (2, 0, 2, 2)}, ValueError, "stage_sizes"),
        ({"depth": 18}, TypeError, "depth"),
        ({"in_channels": -3}, ValueError, "in_channels"),
    ],
)
def test_bad_overrides_name_the_argument(overrides, error, names):
    with pytest.raises(error, match=names):
        zoo.create_model("resnet18", **overrides)


def test_bad_alexnet_and_mlp_config():
    with pytest.raises(ValueError, match="norm"):
        zoo.create_model("alexnet", norm="layer")
    with pytest.raises(ValueError, match="dropout_rate"):
        zoo.create_model("alexnet", dropout_rate=1.5)
    with pytest.raises(ValueError, match="activation"):
        zoo.create_model("mlp", activation="gelu")


@pytest.mark.parametrize(
    ("name", "shape", "expected"),
    [
        ("lenet5", (2, 28, 28, 1), r"\(batch, 32, 32, 1\)"),
        ("lenet5", (2, 32, 32, 3), r"\(batch, 32, 32, 1\)"),
        ("lenet5", (32, 32, 1), r"\(batch, 32, 32, 1\)"),
        ("resnet18", (2, 64, 64, 1), r"\(batch, height, width, 3\)"),
        ("alexnet", (2, 227, 227, 3), r"\(batch, 224, 224, 3\)"),
    ],
)
def test_wrong_input_shape_is_reported_before_compiling(name, shape, expected):
    model = zoo.create_model(name)
    with pytest.raises(ValueError, match=expected) as error:
        jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))
    assert str(shape) in str(error.value)


def test_model_info_describes_the_model():
    info = zoo.model_info("lenet5")
    assert info.input_shape == (32, 32, 1) and info.fixed_input_size
    assert info.num_classes == 10 and info.reference_params == 61_706
    assert "LeCun" in info.paper
    assert zoo.model_info("resnet50").input_shape == (224, 224, 3)
    assert not zoo.model_info("resnet50").fixed_input_size


def test_duplicate_registration_is_an_error():
    info = zoo.model_info("lenet5")
    with pytest.raises(ValueError, match="already registered"):
        zoo.registry.register("lenet5", info.module, paper="", description="")


@pytest.mark.parametrize(
    ("model", "field", "value", "expected"),
    [
        ("mlp", "hidden", 7, "a sequence of integers"),
        ("mlp", "hidden", [7, "8"], "a sequence of integers"),
        ("mlp", "activation", 3, "a string"),
        ("lenet5", "num_classes", "ten", "an integer"),
        ("lenet5", "num_classes", True, "an integer"),
        ("lenet5", "num_classes", 10.0, "an integer"),
        ("lenet5", "in_channels", [1], "an integer"),
        ("lenet5", "input_size", (32,), "a sequence of 2 integers"),
        ("lenet5", "input_size", "32x32", "a sequence of 2 integers"),
        ("lenet5", "dtype", "banana", "a floating-point dtype"),
        ("lenet5", "dtype", None, "a floating-point dtype"),
        ("lenet5", "dtype", jnp.int8, "a floating-point dtype"),
        ("lenet5", "param_dtype", "int8", "a floating-point dtype"),
        ("lenet5", "param_dtype", 1.0, "a floating-point dtype"),
        ("resnet18", "stage_sizes", (2, 2, 2.5, 2), "a sequence of integers"),
        ("resnet18", "zero_init_residual", 1, "a boolean"),
        ("resnet18", "drop_path_rate", "0.1", "a number"),
        ("alexnet", "widths", [96, 256], "a sequence of 5 integers"),
    ],
)
def test_each_field_is_checked_against_its_type_before_anything_is_built(
    model, field, value, expected
):
    with pytest.raises(zoo.errors.InvalidValueError) as error:
        zoo.create_model(model, **{field: value})
    message = str(error.value)
    assert message == f"{model}: {field}={value!r} is not {expected}" or (
        message.startswith(f"{model}: {field}=") and f"is not {expected}" in message
    )
    assert "\n" not in message
    # A module built directly, not through the registry, is refused too (its own range
    # checks may come first).
    with pytest.raises(ValueError, match=field):
        zoo.model_info(model).module(**{**zoo.model_info(model).config(), field: value})


def test_every_floating_dtype_spelling_is_accepted_and_names_become_dtypes():
    for dtype in (jnp.float32, jnp.bfloat16, "bfloat16", "float16", jnp.dtype("float32")):
        model = zoo.create_model("lenet5", dtype=dtype, param_dtype=dtype)
        assert jnp.dtype(model.dtype) == jnp.dtype(dtype)
    assert zoo.create_model("lenet5", dtype="bfloat16").dtype == jnp.bfloat16
    labels = np.array([0, 3, 1])  # A NumPy integer, as `labels.max() + 1` gives it.
    assert zoo.create_model("mlp", hidden=[3], num_classes=labels.max() + 1).num_classes == 4
