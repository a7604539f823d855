"""torchvision weights in the zoo: converted logits equal torchvision's, no download needed.

Each torchvision model is built with random weights whose BatchNorm statistics and affine
parameters are all randomised too (so a wrong mapping of any of them shows), converted, and run
on the same random images: NCHW in torch, NHWC here. Needs the `torch` extra; skipped without.
"""

from __future__ import annotations

import dataclasses
import fractions

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo import hub
from zoo.cli import main
from zoo.convert import TORCHVISION_ARCHS, convert_state_dict, load_state_dict
from zoo.convert import torchvision as tv_convert
from zoo.models.convnext import VARIANTS as CONVNEXT_VARIANTS
from zoo.models.layers import BatchNorm
from zoo.models.vit import VARIANTS as VIT_VARIANTS

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
from zoo.models.vit import VisionTransformer  # noqa: E402

BasicBlock = torchvision.models.resnet.BasicBlock
Bottleneck = torchvision.models.resnet.Bottleneck

# Small inputs keep the deep ResNets fast. AlexNet at 255x255 ends in 7x7 maps, so its adaptive
# pool to 6x6 averages overlapping bins (at 224 it is the identity, at 63 a 1x1 broadcast).
INPUT_SIZES = {"alexnet": 255}
RESNET_INPUT = 64


def random_torchvision(arch: str, size: int, seed: int = 0) -> torch.nn.Module:
    """torchvision's `arch` with random weights and non-trivial BatchNorm, in eval mode.

    Running statistics come from one training-mode pass (momentum 1), so activations stay near
    unit scale; each residual branch's last BatchNorm gets a small scale, as in a trained ResNet.
    With every branch at full scale, ResNet-152's 50 random blocks amplify float32 rounding to
    ~1e-3 in the logits (in float64 both sides agree to 5e-12: the conversion is exact).
    """
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for norm in norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0.0, 0.2)
            norm.momentum = 1.0
        for block in model.modules():
            if isinstance(block, BasicBlock | Bottleneck):
                last = block.bn3 if isinstance(block, Bottleneck) else block.bn2
                last.weight.uniform_(0.0, 0.5)
        model.train()
        model(torch.randn(4, 3, size, size))
    model.eval()
    return model


def torch_logits(model: torch.nn.Module, images_nchw: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(images_nchw)).numpy()


def zoo_logits(converted, images_nchw: np.ndarray) -> np.ndarray:
    images = jnp.asarray(images_nchw.transpose(0, 2, 3, 1))
    return np.asarray(converted.module.apply(converted.variables, images, train=False))


def state_dict_arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {key: value.numpy() for key, value in model.state_dict().items()}


def assert_logits_match(ours: np.ndarray, reference: np.ndarray) -> float:
    # Absolute 1e-4, and 1e-4 of the logits' own scale: random AlexNet's logits are ~0.03, where
    # an absolute bound alone would pass a scrambled fc6.
    difference = float(np.abs(ours - reference).max())
    scale = float(np.abs(reference).max())
    assert difference < 1e-4, difference
    assert difference < 1e-4 * scale, (difference, scale)
    return difference


# ConvNeXt and ViT have their own parity tests below (LayerNorm and layer scale randomised; ViT
# at a toy size torchvision's class can build).
TRANSFORMER_ERA = {*CONVNEXT_VARIANTS, *VIT_VARIANTS}


@pytest.mark.parametrize("arch", [a for a in TORCHVISION_ARCHS if a not in TRANSFORMER_ERA])
def test_converted_logits_equal_torchvision(arch):
    size = INPUT_SIZES.get(arch, RESNET_INPUT)
    model = random_torchvision(arch, size)
    images = np.random.default_rng(1).standard_normal((2, 3, size, size), np.float32)
    converted = convert_state_dict(arch, state_dict_arrays(model))
    assert converted.model_config == {"num_classes": 1000}
    assert_logits_match(zoo_logits(converted, images), torch_logits(model, images))


def test_alexnet_fc6_needs_the_chw_to_hwc_permutation(monkeypatch):
    # Without reordering fc6's inputs the shapes still fit: only the logits tell.
    size = INPUT_SIZES["alexnet"]
    model = random_torchvision("alexnet", size)
    images = np.random.default_rng(1).standard_normal((2, 3, size, size), np.float32)
    unpermuted = dataclasses.replace(TORCHVISION_ARCHS["alexnet"], flattened={})
    monkeypatch.setitem(tv_convert.ARCHS, "alexnet", unpermuted)
    converted = convert_state_dict("alexnet", state_dict_arrays(model))
    with pytest.raises(AssertionError):
        assert_logits_match(zoo_logits(converted, images), torch_logits(model, images))


def test_num_classes_follows_the_state_dict():
    state_dict = state_dict_arrays(torchvision.models.resnet18(weights=None, num_classes=10))
    converted = convert_state_dict("resnet18", state_dict)
    assert converted.model_config == {"num_classes": 10}
    assert converted.variables["params"]["fc"]["kernel"].shape == (512, 10)


def test_a_state_dict_that_does_not_fit_lists_every_problem():
    state_dict = state_dict_arrays(torchvision.models.resnet18(weights=None))
    del state_dict["layer1.0.bn1.running_var"]
    state_dict["layer2.0.conv1.weight"] = state_dict["layer2.0.conv1.weight"][:, :32]
    state_dict["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as error:
        convert_state_dict("resnet18", state_dict)
    message = str(error.value)
    assert "missing torch keys: layer1.0.bn1.running_var" in message
    assert "layer2.0.conv1.weight is float32 (128, 32, 3, 3), expected floating (128, 64" in message
    assert "unmapped torch keys: extra.weight" in message
    assert "num_batches_tracked" not in message

    resnet50 = state_dict_arrays(torchvision.models.resnet50(weights=None))
    with pytest.raises(ValueError, match="does not fit torchvision resnet18"):
        convert_state_dict("resnet18", resnet50)
    with pytest.raises(ValueError, match="unsupported torchvision architecture 'vgg16'"):
        convert_state_dict("vgg16", state_dict)
    with pytest.raises(ValueError, match="not a torchvision alexnet state dict: it has no"):
        convert_state_dict("alexnet", state_dict)


def test_loading_accepts_wrapped_state_dicts_and_runs_no_code(tmp_path):
    state_dict = torchvision.models.alexnet(weights=None).state_dict()
    for wrapper in ("state_dict", "model"):
        path = tmp_path / f"{wrapper}.pth"
        torch.save({wrapper: state_dict, "epoch": 3}, path)
        loaded = load_state_dict(path)
        assert list(loaded) == list(state_dict)
        np.testing.assert_array_equal(loaded["features.0.weight"], state_dict["features.0.weight"])
    data_parallel = tmp_path / "ddp.pth"
    torch.save({f"module.{key}": value for key, value in state_dict.items()}, data_parallel)
    assert list(load_state_dict(data_parallel)) == list(state_dict)

    pickled_object = tmp_path / "object.pth"
    torch.save({"weights": state_dict, "not_a_tensor": fractions.Fraction(1, 3)}, pickled_object)
    with pytest.raises(ValueError, match="is not a tensor-only PyTorch file"):
        load_state_dict(pickled_object)
    with pytest.raises(FileNotFoundError, match="no state dict file at"):
        load_state_dict(tmp_path / "missing.pth")
    not_tensors = tmp_path / "numbers.pth"
    torch.save({"a": 1}, not_tensors)
    with pytest.raises(ValueError, match="is not a state dict: a are not tensors"):
        load_state_dict(not_tensors)


def test_import_torchvision_cli_round_trip(tmp_path, capsys):
    model = random_torchvision("resnet18", RESNET_INPUT)
    path = tmp_path / "resnet18-random.pth"
    torch.save(model.state_dict(), path)
    registry = tmp_path / "registry"
    argv = ["import-torchvision", "resnet18", str(path), "--name", "rn18-tv"]
    assert main([*argv, "--registry", str(registry)]) == 0
    assert "saved torchvision resnet18 as rn18-tv" in capsys.readouterr().out

    loaded = hub.load("rn18-tv", registry=registry)
    assert loaded.model_name == "resnet18"
    assert loaded.meta["source"] == "torchvision"
    assert loaded.meta["arch"] == "resnet18"
    assert loaded.meta["state_dict_file"] == "resnet18-random.pth"
    assert len(loaded.meta["state_dict_sha256"]) == 64
    assert loaded.preprocessing == tv_convert.IMAGENET_PREPROCESSING
    images = np.random.default_rng(2).standard_normal((2, 3, 64, 64), np.float32)
    ours = np.asarray(loaded.apply(jnp.asarray(images.transpose(0, 2, 3, 1))))
    assert_logits_match(ours, torch_logits(model, images))

    assert main(["import-torchvision", "vgg16", str(path), "--name", "x"]) == 2
    assert "unsupported torchvision architecture 'vgg16'" in capsys.readouterr().err


@pytest.mark.parametrize(("batch", "size"), [(2, 7), (4, 8)])
def test_batch_norm_trains_like_torch(batch, size):
    # ResNet layer4's 7x7 and CIFAR stage 3's 8x8 maps: n = N*H*W is small enough that the
    # biased and unbiased variance differ by 1-2%, so only PyTorch's rule passes.
    channels = 6
    torch.manual_seed(0)
    reference = torch.nn.BatchNorm2d(channels, momentum=0.1, eps=1e-5).train()
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        reference.bias.normal_()
    norm = BatchNorm(use_running_average=False)
    rng = np.random.default_rng(0)
    variables = {
        "params": {
            "scale": jnp.asarray(reference.weight.detach().numpy()),
            "bias": jnp.asarray(reference.bias.detach().numpy()),
        },
        "batch_stats": norm.init(jax.random.key(0), jnp.zeros((1, size, size, channels)))[
            "batch_stats"
        ],
    }
    step = jax.jit(lambda v, x: norm.apply(v, x, mutable=["batch_stats"]))
    for _ in range(3):
        x = (rng.standard_normal((batch, size, size, channels)) * 3 + 1).astype(np.float32)
        ours, updates = step(variables, x)
        variables = {**variables, **updates}
        theirs = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy()
        np.testing.assert_allclose(ours, theirs.transpose(0, 2, 3, 1), atol=2e-5)
        stats = variables["batch_stats"]
        np.testing.assert_allclose(stats["mean"], reference.running_mean.numpy(), atol=1e-6)
        np.testing.assert_allclose(stats["var"], reference.running_var.numpy(), rtol=1e-5)
    eval_mode = BatchNorm(use_running_average=True).apply(variables, x)
    reference.eval()
    theirs = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy()
    np.testing.assert_allclose(eval_mode, theirs.transpose(0, 2, 3, 1), atol=2e-5)


def test_a_converted_resnet_updates_its_statistics_like_torch():
    # One train-mode step of the whole network: every running mean and variance, down to
    # layer4's 2x2 maps (n = 8, where the unbiased variance is 8/7 of the biased one).
    model = random_torchvision("resnet18", RESNET_INPUT)
    converted = convert_state_dict("resnet18", state_dict_arrays(model))
    images = np.random.default_rng(3).standard_normal(
        (2, 3, RESNET_INPUT, RESNET_INPUT), np.float32
    )
    model.train()
    for norm in model.modules():
        if isinstance(norm, torch.nn.BatchNorm2d):
            norm.momentum = 0.1  # PyTorch's default (random_torchvision set 1 for its init).
    with torch.no_grad():
        model(torch.from_numpy(images))
    module = converted.module
    _, updates = jax.jit(lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"]))(
        converted.variables, jnp.asarray(images.transpose(0, 2, 3, 1))
    )
    expected = convert_state_dict("resnet18", state_dict_arrays(model)).variables["batch_stats"]
    chex.assert_trees_all_close(updates["batch_stats"], expected, rtol=2e-4, atol=2e-5)


def test_every_family_normalises_with_the_zoo_batch_norm():
    import flax.linen as nn

    seen = set()

    def record(next_fun, args, kwargs, context):
        seen.add(type(context.module))
        return next_fun(*args, **kwargs)

    smallest = {}  # One model per family (module class), its smallest.
    for name in sorted(zoo.list_models(), key=lambda n: -zoo.summary(n).total_params):
        smallest[zoo.model_info(name).module] = name
    for name in smallest.values():
        x = jax.ShapeDtypeStruct((1, *zoo.model_info(name).input_shape), jnp.float32)
        with nn.intercept_methods(record):
            jax.eval_shape(zoo.create_model(name).init, jax.random.key(0), x)
    assert BatchNorm in seen and nn.BatchNorm not in seen


# --- ConvNeXt and the Vision Transformer ---------------------------------------------------


def randomise_norms_and_scales(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every LayerNorm's affine parameters, every other bias, ConvNeXt's layer scales and ViT's
    class token and head drawn at random (their initial 1, 0, 1e-6, 0 and 0 would hide a
    misplaced one), in eval mode."""
    torch.manual_seed(seed)
    norms = {m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
    with torch.no_grad():
        for norm in norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0.0, 0.2)
        normed = {id(p) for norm in norms for p in norm.parameters()}
        for name, parameter in model.named_parameters():
            if id(parameter) in normed:
                continue
            if name.endswith("layer_scale"):
                parameter.uniform_(0.0, 0.5)
            elif name.startswith("heads."):
                parameter.normal_(0.0, 0.05)
            elif name.endswith("bias") or name == "class_token":
                parameter.normal_(0.0, 0.1)
    return model.eval()


def assert_within_2e5_of_scale(ours: np.ndarray, reference: np.ndarray) -> None:
    scale = float(np.abs(reference).max())
    difference = float(np.abs(ours - reference).max())
    assert scale > 0.1 and difference < 2e-5 * scale, (difference, scale)


def jitted_logits(converted, images_nchw: np.ndarray) -> np.ndarray:
    images = jnp.asarray(images_nchw.transpose(0, 2, 3, 1))
    return np.asarray(jax.jit(converted.module.apply)(converted.variables, images))


def test_convnext_logits_equal_torchvision():
    # Built on the meta device and filled with plain normal draws: torchvision's own truncated
    # normal initialisation of 28 M weights takes seconds.
    with torch.device("meta"):
        model = torchvision.models.convnext_tiny()
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.02)
    model = randomise_norms_and_scales(model)
    images = np.random.default_rng(1).standard_normal((2, 3, 64, 80), np.float32)
    converted = convert_state_dict("convnext_tiny", state_dict_arrays(model))
    assert converted.model_config == {"num_classes": 1000}
    assert converted.variables["params"]["stage1_block0"]["layer_scale"]["gamma"].shape == (96,)
    assert_within_2e5_of_scale(jitted_logits(converted, images), torch_logits(model, images))


TINY_VIT = {"patch_size": 8, "num_layers": 2, "num_heads": 4, "hidden_dim": 32, "mlp_dim": 64}


@pytest.fixture
def tiny_vit(monkeypatch):
    """torchvision's `VisionTransformer` class at a toy size (32x32 images, 4x4 patches of 8),
    and the zoo's ViT of that shape, registered and converted through vit_b_16's own mapping:
    the code path of every torchvision ViT, in a fraction of a second."""
    zoo.registry.register(
        "vit_tiny_test",
        VisionTransformer,
        **TINY_VIT,
        input_size=(32, 32),
        paper="this test",
        description="torchvision's ViT at a toy size",
    )
    spec = dataclasses.replace(TORCHVISION_ARCHS["vit_b_16"], model_name="vit_tiny_test")
    monkeypatch.setitem(tv_convert.ARCHS, "vit_tiny_test", spec)
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, num_classes=7, **TINY_VIT)
    yield randomise_norms_and_scales(model)
    zoo.registry.unregister("vit_tiny_test")


def test_vit_logits_equal_torchvision(tiny_vit):
    images = np.random.default_rng(1).standard_normal((3, 3, 32, 32), np.float32)
    converted = convert_state_dict("vit_tiny_test", state_dict_arrays(tiny_vit))
    assert converted.model_config == {"num_classes": 7, "input_size": (32, 32)}
    assert_within_2e5_of_scale(jitted_logits(converted, images), torch_logits(tiny_vit, images))
    # Headless: the class token's final state, after the encoder's last LayerNorm.
    headless = converted.module.clone(num_classes=0)
    variables = {"params": {k: v for k, v in converted.variables["params"].items() if k != "head"}}
    features = jax.jit(headless.apply)(variables, jnp.asarray(images.transpose(0, 2, 3, 1)))
    with torch.no_grad():
        tokens = tiny_vit.encoder(
            torch.cat(
                [
                    tiny_vit.class_token.expand(3, -1, -1),
                    tiny_vit._process_input(torch.from_numpy(images)),
                ],
                dim=1,
            )
        )
    np.testing.assert_allclose(
        features, tokens[:, 0].numpy(), atol=2e-5 * float(tokens.abs().max())
    )


def torch_vit_at_any_size(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """torchvision's ViT run at another image size as timm runs its ViTs there
    (`dynamic_img_size=True`): the patch position embeddings resampled by timm's
    `resample_abs_pos_embed` defaults, bicubic with antialiasing, corners not aligned."""
    x = model.conv_proj(images)
    n, dim, height, width = x.shape
    x = torch.cat([model.class_token.expand(n, -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
    embedding = model.encoder.pos_embedding
    side = round((embedding.shape[1] - 1) ** 0.5)
    grid = embedding[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(
        grid, size=(height, width), mode="bicubic", antialias=True, align_corners=False
    )
    patches = grid.permute(0, 2, 3, 1).reshape(1, height * width, dim)
    x = x + torch.cat([embedding[:, :1], patches], dim=1)
    return model.heads(model.encoder.ln(model.encoder.layers(x))[:, 0])


@pytest.mark.parametrize(
    "size", [(48, 40), (16, 24), (39, 57)], ids=["larger", "smaller", "ragged"]
)
def test_vit_at_another_size_resamples_its_position_embeddings_as_timm(tiny_vit, size):
    images = np.random.default_rng(2).standard_normal((2, 3, *size), np.float32)
    converted = convert_state_dict("vit_tiny_test", state_dict_arrays(tiny_vit))
    with torch.no_grad():
        reference = torch_vit_at_any_size(tiny_vit, torch.from_numpy(images)).numpy()
    assert_within_2e5_of_scale(jitted_logits(converted, images), reference)


@pytest.mark.parametrize(
    ("old", "new"), [((14, 14), (20, 24)), ((14, 14), (5, 9)), ((7, 7), (1, 1))]
)
def test_position_embeddings_resample_as_torch_interpolates_them(old, new):
    from zoo.models.layers import resample_position_embedding

    dim = 5
    embedding = np.random.default_rng(0).standard_normal((1, 1 + old[0] * old[1], dim), np.float32)
    ours = np.asarray(resample_position_embedding(jnp.asarray(embedding), old, new))
    grid = torch.from_numpy(embedding[:, 1:]).reshape(1, *old, dim).permute(0, 3, 1, 2)
    resized = torch.nn.functional.interpolate(grid, size=new, mode="bicubic", antialias=True)
    expected = np.concatenate(
        [embedding[:, :1], resized.permute(0, 2, 3, 1).reshape(1, -1, dim).numpy()], axis=1
    )
    np.testing.assert_allclose(ours, expected, atol=2e-6)


@pytest.mark.parametrize(
    ("arch", "options"),
    [*((a, {}) for a in (*CONVNEXT_VARIANTS, *VIT_VARIANTS)), ("vit_b_16", {"image_size": 384})],
)
def test_every_torchvision_key_of_convnext_and_vit_maps_to_a_zoo_variable(arch, options):
    """Names and shapes only: torchvision's model on the meta device allocates no weights."""
    with torch.device("meta"):
        model = getattr(torchvision.models, arch)(**options)
    state_dict = {
        key: jax.ShapeDtypeStruct(tuple(value.shape), np.float32)
        for key, value in model.state_dict().items()
    }
    mapping = tv_convert.map_state_dict(arch, state_dict)  # Raises listing anything unmapped.
    assert {key for key, _ in mapping.sources.values()} == set(state_dict)
    if arch in VIT_VARIANTS:  # Its grid of position embeddings: torchvision's image_size.
        size = options.get("image_size", 224)
        assert mapping.config == {"num_classes": 1000, "input_size": (size, size)}
    else:
        assert mapping.config == {"num_classes": 1000}
    sizes = sum(leaf.size for path, (_, leaf) in mapping.sources.items() if path[0] == "params")
    assert sizes == sum(p.numel() for p in model.parameters())
