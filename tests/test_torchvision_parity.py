"""torchvision weights in the zoo: converted logits equal torchvision's, no download needed.

Each torchvision model is built with random weights whose BatchNorm statistics and affine
parameters are all randomised too (so a wrong mapping of any of them shows), converted, and run
on the same random images: NCHW in torch, NHWC here. Needs the `torch` extra; skipped without.
"""

from __future__ import annotations

import dataclasses
import fractions

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo import hub
from zoo.cli import main
from zoo.convert import TORCHVISION_ARCHS, convert_state_dict, load_state_dict
from zoo.convert import torchvision as tv_convert
from zoo.models.inverted_residual import InvertedResidual
from zoo.models.layers import BatchNorm

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
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


# The mobile networks have tests of their own (below).
MOBILE_ARCHS = [
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    *(f"efficientnet_b{i}" for i in range(8)),
]


@pytest.mark.parametrize("arch", [a for a in TORCHVISION_ARCHS if a not in MOBILE_ARCHS])
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


# --- MobileNet V2/V3 and EfficientNet ------------------------------------------------------------

MOBILE_INPUT = 64


def assert_within_scale(ours: np.ndarray, reference: np.ndarray, share: float = 2e-5) -> float:
    """|ours - reference| within `share` of the reference's largest magnitude; the share."""
    difference = float(np.abs(ours - reference).max()) / float(np.abs(reference).max())
    assert difference < share, difference
    return difference


def random_mobile_torchvision(arch: str) -> torch.nn.Module:
    """`random_torchvision` with each residual block's last BatchNorm small, as trained."""
    model = random_torchvision(arch, MOBILE_INPUT)
    blocks = (
        torchvision.models.mobilenetv2.InvertedResidual,
        torchvision.models.mobilenetv3.InvertedResidual,
        torchvision.models.efficientnet.MBConv,
    )
    with torch.no_grad():
        for block in model.modules():
            if isinstance(block, blocks) and block.use_res_connect:
                norms = [m for m in block.modules() if isinstance(m, torch.nn.BatchNorm2d)]
                norms[-1].weight.uniform_(0.0, 0.5)
    return model


# Numbers for one network of each family (the others are these at other widths and depths;
# their mapping and constants are checked on the meta device, below).
@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0"])
def test_mobile_networks_compute_torchvisions_logits_and_statistics(arch):
    """Eval mode, then one train-mode step (dropout and stochastic depth off on both sides):
    the logits within 2e-5 of their scale, and every running mean and variance updated as
    PyTorch updates it (momentum 0.01 in MobileNet V3)."""
    model = random_mobile_torchvision(arch)
    momentum = {m.momentum for m in meta_torchvision(arch).modules() if isinstance(m, Norm2d)}
    converted = convert_state_dict(arch, state_dict_arrays(model))
    images = np.random.default_rng(1).standard_normal(
        (2, 3, MOBILE_INPUT, MOBILE_INPUT), np.float32
    )
    assert converted.model_config == {"num_classes": 1000}
    assert_within_scale(zoo_logits(converted, images), torch_logits(model, images))

    off = {"dropout_rate": 0.0}
    if hasattr(converted.module, "drop_path_rate"):
        off["drop_path_rate"] = 0.0
    module = converted.module.clone(**off)
    for layer in model.modules():
        if isinstance(layer, Norm2d):
            (layer.momentum,) = momentum  # random_torchvision set 1 for its statistics
        if isinstance(layer, torch.nn.Dropout | torchvision.ops.StochasticDepth):
            layer.p = 0.0
    model.train()
    with torch.no_grad():
        theirs = model(torch.from_numpy(images)).numpy()
    ours, updates = jax.jit(lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"]))(
        converted.variables, jnp.asarray(images.transpose(0, 2, 3, 1))
    )
    assert_within_scale(np.asarray(ours), theirs)
    expected = convert_state_dict(arch, state_dict_arrays(model)).variables["batch_stats"]
    chex.assert_trees_all_close(updates["batch_stats"], expected, rtol=2e-4, atol=2e-5)


Norm2d = torch.nn.BatchNorm2d


def meta_torchvision(arch: str) -> torch.nn.Module:
    """torchvision's `arch` on the meta device: its modules and shapes, no memory, no values."""
    with torch.device("meta"):
        return getattr(torchvision.models, arch)(weights=None)


@pytest.mark.parametrize("arch", MOBILE_ARCHS)
def test_every_mobile_network_maps_onto_torchvision_with_its_constants(arch):
    """Every torchvision key and shape, and the constants shapes do not show, from the modules
    the conversion builds: BatchNorm eps and momentum, dropout, the stochastic depth of every
    block (torchvision's rule: rate * i / blocks), the input size; and torchvision's GFLOPS."""
    model = meta_torchvision(arch)
    shapes = {k: np.broadcast_to(np.float32(0), v.shape) for k, v in model.state_dict().items()}
    called = {}  # module path -> module (the conversion traces the network more than once)

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__":
            called.setdefault(context.module.path, context.module)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        converted = convert_state_dict(arch, shapes)  # raises on a missing, extra or misfit key
    assert converted.model_name == arch and converted.model_config == {"num_classes": 1000}

    def ours(kind, field):
        return [getattr(m, field) for m in called.values() if isinstance(m, kind)]

    def theirs(kind, field):
        return [getattr(m, field) for m in model.modules() if isinstance(m, kind)]

    norms = set(zip(ours(BatchNorm, "epsilon"), ours(BatchNorm, "momentum"), strict=True))
    torch_norms = set(zip(theirs(Norm2d, "eps"), theirs(Norm2d, "momentum"), strict=True))
    assert {(eps, round(1 - keep, 6)) for eps, keep in norms} == torch_norms
    assert ours(nn.Dropout, "rate") == theirs(torch.nn.Dropout, "p")
    rates = ours(InvertedResidual, "drop_path_rate")
    assert rates == pytest.approx(
        theirs(torchvision.ops.StochasticDepth, "p") or [0.0] * len(rates)
    )
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    crop = weights.transforms.keywords["crop_size"]
    assert converted.module.input_size == (crop, crop)
    assert TORCHVISION_ARCHS[arch].preprocessing.input_shape == (crop, crop, 3)
    # torchvision's GFLOPS are the convolutions' and dense layers' MACs at that size.
    assert round(zoo.summary(arch).total_macs / 1e9, 3) == weights.meta["_ops"]
