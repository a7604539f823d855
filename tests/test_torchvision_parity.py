"""torchvision weights in the zoo: converted logits equal torchvision's, no download needed.

Each torchvision model is built with random weights whose BatchNorm statistics and affine
parameters are all randomised too (so a wrong mapping of any of them shows), converted, and run
on the same random images: NCHW in torch, NHWC here. Needs the `torch` extra; skipped without.
"""

from __future__ import annotations

import copy
import dataclasses
import fractions
import functools
import re
import warnings

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
from zoo.models.convnext import VARIANTS as CONVNEXT_VARIANTS
from zoo.models.inverted_residual import InvertedResidual
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


def random_torchvision(arch: str, size: int, seed: int = 0, **kwargs) -> torch.nn.Module:
    """torchvision's `arch` (built with `kwargs`) with random weights and non-trivial
    BatchNorm, in eval mode (`randomise`)."""
    torch.manual_seed(seed)
    return randomise(getattr(torchvision.models, arch)(weights=None, **kwargs), size)


def randomise(model: torch.nn.Module, size: int) -> torch.nn.Module:
    """`model` with random BatchNorm parameters and statistics, in eval mode.

    Running statistics come from one training-mode pass (momentum 1), so activations stay near
    unit scale; each residual branch's last BatchNorm gets a small scale, as in a trained ResNet.
    With every branch at full scale, ResNet-152's 50 random blocks amplify float32 rounding to
    ~1e-3 in the logits (in float64 both sides agree to 5e-12: the conversion is exact).
    """
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
    for norm in norms:
        norm.momentum = 0.1  # PyTorch's default again, for a later train-mode step.
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


# The architectures whose logits are compared here; every other one's keys and shapes are
# checked against torchvision's by `test_every_architecture_maps_every_key_and_shape`, and one
# of each family is compared in eval and train mode by `test_each_family_matches_torchvision_...`.
LOGIT_ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "alexnet"]
# The mobile networks have tests of their own (below).
MOBILE_ARCHS = [
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    *(f"efficientnet_b{i}" for i in range(8)),
]
# ConvNeXt and ViT have their own parity tests below (LayerNorm and layer scale randomised; ViT
# at a toy size torchvision's class can build).
TRANSFORMER_ERA = [*CONVNEXT_VARIANTS, *VIT_VARIANTS]


@pytest.mark.parametrize("arch", LOGIT_ARCHS)
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
    with pytest.raises(ValueError, match="unsupported torchvision architecture 'inception_v3'"):
        convert_state_dict("inception_v3", state_dict)
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
    out = capsys.readouterr().out
    assert "saved torchvision resnet18 as rn18-tv" in out and "ImageNet's class names" in out

    loaded = hub.load("rn18-tv", registry=registry)
    assert loaded.model_name == "resnet18"
    assert loaded.meta["source"] == "torchvision"
    assert loaded.meta["arch"] == "resnet18"
    assert loaded.meta["state_dict_file"] == "resnet18-random.pth"
    assert len(loaded.meta["state_dict_sha256"]) == 64
    assert loaded.preprocessing == tv_convert.IMAGENET_PREPROCESSING
    # ImageNet's categories, as torchvision's weights carry them (nothing downloaded).
    categories = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    assert loaded.class_names == tuple(categories) and len(categories) == 1000
    assert loaded.class_names[:2] == ("tench", "goldfish")
    images = np.random.default_rng(2).standard_normal((2, 3, 64, 64), np.float32)
    ours = np.asarray(loaded.apply(jnp.asarray(images.transpose(0, 2, 3, 1))))
    assert_logits_match(ours, torch_logits(model, images))

    # Names of one's own: a file, one a line; one too few is refused, naming the file.
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"thing {i}" for i in range(999)) + "\n")
    named = [*argv[:-1], "rn18-named", "--class-names", str(names), "--registry", str(registry)]
    assert main(named) == 2
    assert capsys.readouterr().err == (
        f"zoo import-torchvision: error: {names}: 999 class names for a model of 1000 classes\n"
    )
    names.write_text("\n".join(f"thing {i}" for i in range(1000)) + "\n\n")
    assert main(named) == 0
    assert f"classes named by {names}" in capsys.readouterr().out
    assert hub.load("rn18-named", registry=registry).class_names[-1] == "thing 999"

    assert main(["import-torchvision", "inception_v3", str(path), "--name", "x"]) == 2
    assert "unsupported torchvision architecture 'inception_v3'" in capsys.readouterr().err


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
    # The published count orders them without describing every model (None: a small one).
    for name in sorted(zoo.list_models(), key=lambda n: -(zoo.model_info(n).reference_params or 0)):
        smallest[zoo.model_info(name).module] = name
    for name in smallest.values():
        x = jax.ShapeDtypeStruct((1, *zoo.model_info(name).input_shape), jnp.float32)
        with nn.intercept_methods(record):
            jax.eval_shape(zoo.create_model(name).init, jax.random.key(0), x)
    assert BatchNorm in seen and nn.BatchNorm not in seen


# --- The families after AlexNet: one architecture of each, in eval and train mode -------------


def small_vgg(arch: str, hidden: int = 64, num_classes: int = 10) -> torch.nn.Module:
    """torchvision's VGG `arch` with fc6 and fc7 `hidden` wide: the convolutions are torchvision's
    own; its 4096-wide classifier (fc6 alone 102,764,544 parameters) is built on the `meta`
    device only and replaced by the same layers, narrower."""
    with torch.device("meta"):
        model = getattr(torchvision.models, arch)(weights=None)
    model.features = model.features.to_empty(device="cpu")
    for module in model.features.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    nn = torch.nn
    model.classifier = nn.Sequential(
        *(nn.Linear(512 * 7 * 7, hidden), nn.ReLU(True), nn.Dropout()),
        *(nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout()),
        nn.Linear(hidden, num_classes),
    )
    return model


# arch: (input size, the torch model, what the zoo config must then be). VGG at 100x100 ends
# in 3x3 maps, which the adaptive pool spreads over overlapping 7x7 bins; GoogLeNet's max
# pools round 50 -> 25 and 12 -> 6 up (ceil_mode), and its state dict holds the auxiliary
# heads the zoo drops; DenseNet at 64 ends in 2x2 maps.
FAMILIES = {
    "resnext50_32x4d": (64, lambda: random_torchvision("resnext50_32x4d", 64), {}),
    "vgg11_bn": (100, lambda: randomise(small_vgg("vgg11_bn"), 100), {"hidden": 64}),
    "googlenet": (
        100,
        lambda: random_torchvision("googlenet", 100, transform_input=True, init_weights=True),
        {"transform_input": True},
    ),
    "densenet121": (64, lambda: random_torchvision("densenet121", 64), {}),
}
# Logits agree within this share of their largest magnitude, float32 on both sides, with the
# zoo's direct convolution kernels (`precision="highest"`): as close as PyTorch's float32 is to
# its own float64 (1e-5 for GoogLeNet here). By default float32 3x3 convolutions run Winograd
# (`zoo.ops.conv`), whose rounding about doubles that (`test_converted_logits_equal_torchvision`
# runs that path).
RELATIVE_TOLERANCE = 2e-5


def no_dropout(model: torch.nn.Module) -> torch.nn.Module:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def relative_difference(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_each_family_matches_torchvision_in_eval_and_train_mode(arch):
    size, build, config = FAMILIES[arch]
    model = build()
    state_dict = state_dict_arrays(model)
    converted = convert_state_dict(arch, state_dict)
    num_classes = int(model.state_dict()[TORCHVISION_ARCHS[arch].classifier + ".weight"].shape[0])
    assert converted.model_config == {"num_classes": num_classes, **config}
    images = np.random.default_rng(1).standard_normal((2, 3, size, size), np.float32)
    nhwc = jnp.asarray(images.transpose(0, 2, 3, 1))

    module = converted.module
    if hasattr(module, "dropout_rate"):
        module = module.clone(dropout_rate=0.0)

    @functools.partial(jax.jit, static_argnums=2)
    def run(variables, x, train):  # `train` is a Python bool: one trace per mode
        return module.apply(variables, x, train=train, mutable=["batch_stats"] if train else False)

    with jax.default_matmul_precision("float32"):
        ours = run(converted.variables, nhwc, False)
    eval_difference = relative_difference(np.asarray(ours), torch_logits(model, images))
    assert eval_difference < RELATIVE_TOLERANCE, eval_difference

    # One train-mode step: batch statistics in the forward pass, running statistics moved as
    # PyTorch moves them (momentum 0.1, unbiased variance); dropout off on both sides.
    exact = copy.deepcopy(model).double()
    no_dropout(model).train()
    no_dropout(exact).train()
    with torch.no_grad():
        theirs = model(torch.from_numpy(images))
        theirs_exact = exact(torch.from_numpy(images).double())
    # GoogLeNet's auxiliary heads add outputs in training.
    theirs, theirs_exact = (getattr(t, "logits", t).numpy() for t in (theirs, theirs_exact))
    with jax.default_matmul_precision("float32"):
        ours, updates = run(converted.variables, nhwc, True)
    train_difference = relative_difference(np.asarray(ours), theirs)
    # Batch statistics of small maps amplify rounding: GoogLeNet's float32 logits here are
    # 1.1e-5 of their scale from float64's in PyTorch, 1.6e-5-2.1e-5 in the zoo (oneDNN's
    # training kernel rounds its normalisation ~1.5x XLA's), 2.0e-5-2.2e-5 from each other.
    # So: within the tolerance of PyTorch's, or no further from float64's than twice PyTorch.
    torch_error = relative_difference(theirs, theirs_exact)
    our_error = relative_difference(np.asarray(ours), theirs_exact)
    assert train_difference < RELATIVE_TOLERANCE or our_error < 2 * torch_error, (
        train_difference,
        our_error,
        torch_error,
    )
    expected = convert_state_dict(arch, state_dict_arrays(model)).variables["batch_stats"]
    chex.assert_trees_all_close(updates["batch_stats"], expected, rtol=2e-4, atol=2e-5)


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


def meta_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's state dict for `arch`, shapes only (the `meta` device: no memory)."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # GoogLeNet's note on its initialisation
        return getattr(torchvision.models, arch)(weights=None).state_dict()


@pytest.mark.parametrize(
    "arch", [a for a in TORCHVISION_ARCHS if a not in LOGIT_ARCHS + MOBILE_ARCHS + TRANSFORMER_ERA]
)
def test_every_architecture_maps_every_key_and_shape(arch):
    """Every torchvision key of `arch` at its real shape, through the converter: each maps to
    a zoo variable of that shape, and every zoo variable is covered (`convert_state_dict`
    raises otherwise). The arrays are zeros broadcast to the shapes: no memory per weight."""
    meta = meta_state_dict(arch)
    zero = np.zeros((), np.float32)
    state_dict = {key: np.broadcast_to(zero, tuple(value.shape)) for key, value in meta.items()}
    converted = convert_state_dict(arch, state_dict)
    info = zoo.model_info(converted.model_name)
    assert converted.model_config["num_classes"] == 1000
    total = sum(np.size(leaf) for leaf in jax.tree.leaves(converted.variables["params"]))
    assert total == info.reference_params
    kept = [k for k in meta if not k.endswith("num_batches_tracked")]
    dropped = [k for k in kept if k.startswith(TORCHVISION_ARCHS[arch].dropped)]
    assert dropped == ([k for k in kept if k.startswith(("aux1.", "aux2."))])
    assert len(jax.tree.leaves(converted.variables)) == len(kept) - len(dropped)


def test_densenet_reads_the_key_names_of_torchvisions_published_files():
    # densenet121-a639ec97.pth names a dense layer's modules norm.1, relu.1, conv.1, norm.2, ...
    current = meta_state_dict("densenet121")
    zero = np.zeros((), np.float32)
    legacy = {}
    for key, value in current.items():
        old = re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", key)
        legacy[old] = np.broadcast_to(zero, tuple(value.shape))
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    converted = convert_state_dict("densenet121", legacy)
    assert converted.model_config == {"num_classes": 1000}


def test_googlenet_transform_input_is_torchvisions():
    # The pretrained weights expect (x - 0.5) / 0.5; ImageNet-normalised inputs map to it. The
    # import sets it, as torchvision's `googlenet(weights=...)` does; a caller can unset it.
    from zoo.models.googlenet import transform_input

    with torch.device("meta"):
        model = torchvision.models.googlenet(weights=None, transform_input=True, init_weights=True)
    images = np.random.default_rng(4).standard_normal((2, 3, 5, 5), np.float32)
    theirs = model._transform_input(torch.from_numpy(images)).numpy()
    ours = transform_input(jnp.asarray(images.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(np.asarray(ours), theirs.transpose(0, 2, 3, 1), rtol=1e-6)

    zero = np.zeros((), np.float32)
    state_dict = {k: np.broadcast_to(zero, tuple(v.shape)) for k, v in model.state_dict().items()}
    assert convert_state_dict("googlenet", state_dict).module.transform_input
    plain = convert_state_dict("googlenet", state_dict, {"transform_input": False})
    assert plain.model_config == {"num_classes": 1000, "transform_input": False}


def test_ceil_mode_max_pooling_is_pytorchs():
    # GoogLeNet's pools: the output size rounds up, a last window may reach past the input.
    from zoo import formulas
    from zoo.models.layers import MaxPool

    rng = np.random.default_rng(5)
    for window, stride, padding in [(3, 2, 0), (2, 2, 0), (3, 1, 1), (3, 2, 1)]:
        for size in range(1, 12):
            x = rng.standard_normal((1, 2, size, size + 1), np.float32)
            try:
                theirs = torch.nn.functional.max_pool2d(
                    torch.from_numpy(x), window, stride, padding, ceil_mode=True
                ).numpy()
            except RuntimeError:  # torch: output size too small
                with pytest.raises(ValueError, match="does not fit"):
                    formulas.pool_output_size(size, window, stride, padding, ceil_mode=True)
                continue
            expected = [
                formulas.pool_output_size(n, window, stride, padding, ceil_mode=True)
                for n in (size, size + 1)
            ]
            assert list(theirs.shape[2:]) == expected, (window, stride, padding, size)
            pool = MaxPool(window, stride, padding, ceil_mode=True)
            ours = pool.apply({}, jnp.asarray(x.transpose(0, 2, 3, 1)))
            np.testing.assert_array_equal(np.asarray(ours), theirs.transpose(0, 2, 3, 1))


def test_adaptive_average_pooling_is_pytorchs():
    # VGG's pool to 7x7 at any input size: bins overlap, or repeat an input smaller than 7.
    from zoo.models.layers import AdaptiveAvgPool

    rng = np.random.default_rng(6)
    for height, width in [(1, 1), (3, 5), (7, 7), (10, 13), (16, 9)]:
        x = rng.standard_normal((2, 3, height, width), np.float32)
        theirs = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), (7, 7)).numpy()
        ours = AdaptiveAvgPool((7, 7)).apply({}, jnp.asarray(x.transpose(0, 2, 3, 1)))
        np.testing.assert_allclose(ours, theirs.transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)


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
