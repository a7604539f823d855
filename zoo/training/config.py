"""Every training setting in one frozen dataclass, and where its values come from.

Precedence, lowest first: the field defaults, the model's preset (`PRESETS`), a config file
(`--config`: JSON, TOML, or Python defining a dict named `config`), then command-line flags.
A resumed run starts from the config it was saved with instead of the defaults and preset, and
may change only `RESUMABLE_FIELDS` (the rest define the run: changing them would not resume it).

Values are checked when a `TrainConfig` is built, whatever their source: an unknown key, a
wrong type, a number that is not finite or an out-of-range value raises an error naming it and
what is allowed. What depends on the model (its name, the types of its `model_args`, settings
that only a classifier has) is checked as the run's config is resolved (`resolve`, `resumed`,
`check_for_model`), before any data is loaded.

A Python config file is run as Python: it can do anything the user running `zoo train` can, so
only use one you trust (as with any Python script).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import runpy
import tomllib
import traceback
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from zoo.errors import InvalidTypeError, InvalidValueError, NotFoundError, UnknownKeyError
from zoo.registry import model_info

Optimizer = Literal["sgd", "adamw"]
Precision = Literal["fp32", "bf16"]
Schedule = Literal["cosine", "linear", "step", "onecycle"]
DataPipeline = Literal["auto", "device", "streaming"]


@dataclasses.dataclass(frozen=True)
class Flag:
    """How a config field reads as a `zoo train` flag (kept in the field's `Annotated` type)."""

    help: str
    metavar: str | None = None
    name: str | None = None  # The flag's name when it is not the field's (`--model-arg`).


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training run; each field's `Flag` is the help of its `zoo train` flag."""

    model: Annotated[str, Flag("registered model name, e.g. lenet5")]
    dataset: Annotated[
        str,
        Flag(
            "data set: mnist5k (offline), any TFDS image-classification set prepared in "
            "--data-dir (name or name/config:version: cifar10, imagenet2012, ...), "
            "folder:PATH (a folder of class folders), or synthetic",
            "NAME",
        ),
    ] = "mnist5k"
    epochs: Annotated[int, Flag("passes over the training split")] = 10
    batch_size: Annotated[int, Flag("global batch size, split over all devices")] = 128
    optimizer: Annotated[Optimizer, Flag("sgd (with momentum) or adamw")] = "sgd"
    lr: Annotated[
        float, Flag("peak learning rate, reached after warm-up, then cosine decay to 0")
    ] = 0.1
    momentum: Annotated[float, Flag("SGD momentum")] = 0.9
    nesterov: Annotated[bool, Flag("Nesterov momentum for SGD")] = False
    warmup_epochs: Annotated[float, Flag("linear warm-up from 0 to --lr, in epochs")] = 0.0
    weight_decay: Annotated[float, Flag("L2 decay of weights (not biases or norm scales)")] = 5e-4
    label_smoothing: Annotated[float, Flag("cross-entropy label smoothing in [0, 1)")] = 0.0
    # The modern recipe and fine-tuning (`zoo.training.state`, `augment`, `finetune`); all off.
    schedule: Annotated[
        Schedule,
        Flag(
            "learning rate after warm-up: cosine or linear decay to 0, step (x0.1 at 1/2 and "
            "3/4 of the updates), onecycle (Smith's; its ramp is --warmup-epochs)"
        ),
    ] = "cosine"
    grad_accum_steps: Annotated[
        int, Flag("average the gradients of N batches per update: an N-times larger batch")
    ] = 1
    ema_decay: Annotated[
        float,
        Flag(
            "per-step decay of an average of the weights, evaluated every epoch (ema_ "
            "metrics) and saved as the checkpoint's variables (0: off)",
            "D",
        ),
    ] = 0.0
    mixup: Annotated[
        float, Flag("mixup: blend image pairs, Beta(ALPHA, ALPHA) (0: off)", "ALPHA")
    ] = 0.0
    cutmix: Annotated[
        float, Flag("cutmix: paste a box of another image, Beta(ALPHA, ALPHA) (0: off)", "ALPHA")
    ] = 0.0
    warmup_start_factor: Annotated[
        float,
        Flag(
            "warm-up starts at F x --lr (torchvision's --lr-warmup-decay; 0: from 0); not with "
            "onecycle, which starts at lr / 25",
            "F",
        ),
    ] = 0.0
    clip_grad_norm: Annotated[
        float | None,
        Flag("clip the gradient's global L2 norm to this before the update (default: off)", "N"),
    ] = None
    drop_path_rate: Annotated[
        float | None,
        Flag("stochastic depth, for models with the field (default: the model's)", "R"),
    ] = None
    dropout_rate: Annotated[
        float | None, Flag("dropout, for models with the field (default: the model's)", "R")
    ] = None
    init_from: Annotated[
        str | None,
        Flag(
            "start from this registry entry (yours, else a shipped one): matching leaves "
            "load, a new head is re-initialised",
            "NAME",
        ),
    ] = None
    train_only: Annotated[
        str | None,
        Flag(
            "train only the parameters matching these comma-separated globs of module paths "
            "('fc/*' in a ResNet, 'output/*' in LeNet-5; `head` is any model's classifier, "
            "'head,stage4_*' a ResNet's last stage too); the others and their batch statistics "
            "stay frozen (default: all train)",
            "GLOBS",
        ),
    ] = None
    augment: Annotated[bool, Flag("random shifts (digits) or crop+flip (natural images)")] = False
    # A random warp of each training image (`zoo.training.augment.RandomWarp`), after --augment's
    # shifts or crops where both are on; every strength 0 (the default) is no warp.
    rotate: Annotated[float, Flag("random rotation, uniform in +-DEG degrees (0: off)", "DEG")] = (
        0.0
    )
    zoom: Annotated[float, Flag("random scale, uniform in [1-X, 1+X] (0: off)", "X")] = 0.0
    shear: Annotated[
        float, Flag("random shear along x, uniform in +-DEG degrees (0: off)", "DEG")
    ] = 0.0
    translate: Annotated[
        float,
        Flag("random translation, uniform in +-X of the height and of the width (0: off)", "X"),
    ] = 0.0
    elastic_alpha: Annotated[
        float,
        Flag(
            "elastic distortion (Simard et al. 2003): scale of the smoothed random "
            "displacements, in pixels (0: off; their MNIST setting is 34)",
            "PIXELS",
        ),
    ] = 0.0
    elastic_sigma: Annotated[
        float,
        Flag("smoothness of the elastic displacements: a Gaussian's sigma, in pixels", "PIXELS"),
    ] = 4.0
    seed: Annotated[int, Flag("seed of initialisation, shuffling, augmentation and dropout")] = 0
    precision: Annotated[Precision, Flag("bf16: bfloat16 compute, float32 params and loss")] = (
        "fp32"
    )
    max_train_examples: Annotated[
        int | None, Flag("train on the first N examples only (a quick subset; default: all)")
    ] = None
    checkpoint_every: Annotated[int, Flag("save every N epochs (and after the last)")] = 1
    checkpoint_every_steps: Annotated[
        int | None,
        Flag("also save every N training steps, inside epochs: --resume continues at that step"),
    ] = None
    data_pipeline: Annotated[
        DataPipeline,
        Flag(
            "device: the data set held on the devices; streaming: read from storage each "
            "epoch (Grain); auto: device when the set, as the devices would hold it, takes "
            "at most 1 GiB (and its size is known without reading it), else streaming",
        ),
    ] = "auto"
    data_workers: Annotated[
        int | None,
        Flag(
            "streaming: worker processes that read, decode and augment (0: threads of the "
            "training process; default: one per core beyond two, none on 2 cores)"
        ),
    ] = None
    max_to_keep: Annotated[int, Flag("checkpoints kept in the registry per name")] = 3
    name: Annotated[str | None, Flag("registry name (default: MODEL-DATASET)", "NAME")] = None
    registry: Annotated[
        str | None,
        Flag(
            "your registry: where checkpoints are saved, and names looked up before the "
            "shipped models (default: $ZOO_REGISTRY, else ~/.local/share/jax-zoo/registry)",
            "DIR",
        ),
    ] = None
    data_dir: Annotated[
        str | None,
        Flag(
            "TFDS data folder (default: $ZOO_DATA_DIR, else "
            "~/.cache/jax-zoo/tensorflow_datasets for mnist5k and "
            "TFDS's default for the others)",
            "DIR",
        ),
    ] = None
    log: Annotated[str | None, Flag("JSONL metrics file (default: runs/NAME.jsonl)", "FILE")] = None
    model_args: Annotated[
        dict[str, Any],
        Flag(
            "a model argument, e.g. hidden=[128] (repeatable; the value is read as JSON where "
            "it parses, else as a string; default: none)",
            "KEY=VALUE",
            "model-arg",
        ),
    ] = dataclasses.field(default_factory=dict)
    tensorboard: Annotated[
        bool, Flag("TensorBoard event files beside the log (runs/NAME/ for runs/NAME.jsonl)")
    ] = True

    def __post_init__(self) -> None:
        for name, hint in typing.get_type_hints(type(self)).items():
            object.__setattr__(self, name, _checked(name, getattr(self, name), hint))
        _check_ranges(self)

    @property
    def run_name(self) -> str:
        """The registry name: `name`, or `<model>-<dataset>`."""
        return self.name or f"{self.model}-{self.dataset}"

    @property
    def log_path(self) -> Path:
        return Path(self.log) if self.log else Path("runs") / f"{self.run_name}.jsonl"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "config") -> TrainConfig:
        """Builds a config, rejecting unknown keys (with the closest valid one) first."""
        check_keys(values, source)
        return cls(**values)


# The fields a resumed run may change: how long it trains and where things go, not what it is.
RESUMABLE_FIELDS = frozenset(
    {
        "epochs",
        "checkpoint_every",
        "checkpoint_every_steps",
        "max_to_keep",
        "registry",
        "data_dir",
        "data_pipeline",
        "data_workers",
        "log",
        "tensorboard",
    }
)

# Per-model defaults, applied under a config file and flags; the accuracies they reach are in
# bench/README.md, "Presets".
PRESETS: dict[str, dict[str, Any]] = {
    # 4,000 training digits: label smoothing, 2-pixel shifts and mixup, and a random affine warp
    # on top of the shifts, which needs the longer run to pay off; mixup keeps the warped model
    # robust on digits of other writers (bench/README.md, "LeNet-5 on mnist5k"). No weight
    # average (`ema_decay`): the cosine decay to 0 already averages.
    "lenet5": {
        "epochs": 50,
        "batch_size": 64,
        "lr": 0.1,
        "nesterov": True,
        "warmup_epochs": 1.0,
        "weight_decay": 5e-4,
        "label_smoothing": 0.1,
        "augment": True,
        "rotate": 15.0,
        "zoom": 0.15,
        "shear": 15.0,
        "mixup": 0.2,
    },
    # LeCun et al. 1998 train for 20 passes with no weight decay, by stochastic diagonal
    # Levenberg-Marquardt (per-parameter step sizes), which optax does not offer; Adam is the
    # nearest adaptive method. 4,000 digits need more passes, shifts and mixup.
    "lenet5_1998": {
        "epochs": 30,
        "batch_size": 32,
        "optimizer": "adamw",
        "lr": 3e-3,
        "warmup_epochs": 1.0,
        "weight_decay": 0.0,
        "augment": True,
        "mixup": 0.2,
    },
    # The lecture's 2-D latent autoencoder: Adam on the reconstruction error.
    "conv_autoencoder": {
        "epochs": 20,
        "batch_size": 64,
        "optimizer": "adamw",
        "lr": 3e-3,
        "warmup_epochs": 1.0,
        "weight_decay": 0.0,
    },
    # He et al. 2015, Sec. 4.2: SGD 0.1, momentum 0.9, decay 1e-4, batch 128, 4-pixel crops
    # and flips, ~160 epochs; cosine decay (after a 1-epoch warm-up) replaces their steps.
    "resnet20": {
        "dataset": "cifar10",
        "epochs": 160,
        "batch_size": 128,
        "lr": 0.1,
        "weight_decay": 1e-4,
        "augment": True,
        "warmup_epochs": 1.0,
    },
}


# torchvision's reference recipes (pytorch/vision, references/classification/README.md,
# "ConvNeXt" and "Vision Transformer"; the weights' `recipe` link): global batch, optimizer,
# learning rate (a linear warm-up from --lr-warmup-decay x lr, then cosine to 0), weight decay,
# label smoothing, mixup/CutMix (one or the other per batch), gradient clipping, and the weight
# average. Its --model-ema (decay 0.99998 every 32 steps, scaled by batch x 32 / epochs) is the
# per-step decay here: 1 - 0.99998 = 2e-5 -> 2e-5 * batch * 32 / epochs per 32 steps, the 32nd
# root per step. --amp is bf16 here. Not reproduced: its AutoAugment/TrivialAugment policies,
# random erasing, the repeated-augmentation sampler and the 176 -> 224 train/eval crop sizes
# (--augment is crops and flips); its weight decay also reaches biases and layer scales (and
# ViT-B's norms), where `decay_mask` skips every 1-D parameter, tokens and position embeddings.
# The recipes are ImageNet's: name the data set (--dataset) and scale --batch-size /
# --grad-accum-steps to the hardware.
CONVNEXT_RECIPE: dict[str, Any] = {  # 16 GPUs x 64 images, 600 epochs.
    "epochs": 600,
    "batch_size": 1024,
    "optimizer": "adamw",
    "lr": 1e-3,
    "weight_decay": 0.05,
    "warmup_epochs": 5.0,
    "warmup_start_factor": 0.01,
    "label_smoothing": 0.1,
    "mixup": 0.2,
    "cutmix": 1.0,
    "ema_decay": 0.99997,  # 2e-5 * 1024 * 32 / 600 = 1.09e-3 per 32 steps
    "augment": True,
}
VIT_B_RECIPE: dict[str, Any] = {  # vit_b_16: 64 GPUs x 64 images; vit_b_32: 16 x 256; 300 epochs.
    "epochs": 300,
    "batch_size": 4096,
    "optimizer": "adamw",
    "lr": 3e-3,
    "weight_decay": 0.3,
    "warmup_epochs": 30.0,
    "warmup_start_factor": 0.033,
    "label_smoothing": 0.11,
    "mixup": 0.2,
    "cutmix": 1.0,
    "clip_grad_norm": 1.0,
    "ema_decay": 0.99973,  # 2e-5 * 4096 * 32 / 300 = 8.7e-3 per 32 steps
    "augment": True,
    "precision": "bf16",
}
VIT_L_RECIPE: dict[str, Any] = {  # vit_l_16: 16 GPUs x 64 images, 600 epochs, SGD.
    "epochs": 600,
    "batch_size": 1024,
    "optimizer": "sgd",
    "lr": 0.5,
    "momentum": 0.9,
    "weight_decay": 2e-5,
    "warmup_epochs": 5.0,
    "warmup_start_factor": 0.01,
    "label_smoothing": 0.1,
    "mixup": 0.2,
    "cutmix": 1.0,
    "clip_grad_norm": 1.0,
    "ema_decay": 0.99997,  # 2e-5 * 1024 * 32 / 600 per 32 steps
    "augment": True,
}
PRESETS.update(
    {
        **dict.fromkeys(
            ("convnext_tiny", "convnext_small", "convnext_base", "convnext_large"), CONVNEXT_RECIPE
        ),
        **dict.fromkeys(("vit_b_16", "vit_b_32"), VIT_B_RECIPE),
        "vit_l_16": VIT_L_RECIPE,
    }
)


def field_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(TrainConfig))


def flags() -> dict[str, tuple[Any, Flag, Any]]:
    """field name -> (its type, its `Flag`, its default or `dataclasses.MISSING`)."""
    annotated = typing.get_type_hints(TrainConfig, include_extras=True)
    return {
        f.name: (
            typing.get_args(annotated[f.name])[0],
            annotated[f.name].__metadata__[0],
            f.default,
        )
        for f in dataclasses.fields(TrainConfig)
    }


def check_keys(values: Mapping[str, Any], source: str) -> None:
    valid = field_names()
    for key in values:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UnknownKeyError(
                f"{source}: unknown key {key!r}; {hint}valid keys: {', '.join(valid)}"
            )


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The settings in a .json, .toml or .py file (a .py file defines a dict named `config`).

    A .py file is run as Python, with every power of the user running it: load only files you
    trust. Whatever goes wrong in it (a syntax error, an exception, `sys.exit`) is an
    `InvalidValueError` naming the file and the line.
    """
    if not isinstance(path, str | os.PathLike):
        raise InvalidTypeError(f"a config file is a path, got {type(path).__name__} {path!r}")
    path = Path(path)
    if not path.exists():
        raise NotFoundError(f"config file {path} does not exist")
    if not path.is_file():
        raise InvalidValueError(f"config file {path} is not a file")
    if path.suffix in (".json", ".toml"):
        parse = json.loads if path.suffix == ".json" else tomllib.loads
        try:
            values = parse(path.read_text())
        except ValueError as error:  # JSONDecodeError, TOMLDecodeError, UnicodeDecodeError.
            raise InvalidValueError(f"config file {path}: {error}") from None
        except OSError as error:
            raise InvalidValueError(f"config file {path}: {error.strerror}") from None
    elif path.suffix == ".py":
        values = _run_python_config(path).get("config")
    else:
        raise InvalidValueError(
            f"config file {path}: unknown format {path.suffix!r}; use .json, .toml or .py"
        )
    if not isinstance(values, dict):
        what = "define a dict named `config`" if path.suffix == ".py" else "hold a table/object"
        raise InvalidTypeError(f"config file {path} must {what}, got {type(values).__name__}")
    check_keys(values, str(path))
    return values


def _run_python_config(path: Path) -> dict[str, Any]:
    """The globals of Python file `path` once run; its failures as one line naming the line."""
    try:
        return runpy.run_path(str(path))
    except SyntaxError as error:  # Its own line number: the traceback has no frame in the file.
        where = f", line {error.lineno}" if error.lineno else ""
        raise InvalidValueError(
            f"config file {path}{where}: {type(error).__name__}: {error.msg}"
        ) from None
    except (Exception, SystemExit) as error:  # sys.exit in a config is not `zoo train` exiting.
        what = (
            f"called sys.exit({error.code!r})"
            if isinstance(error, SystemExit)
            else f"{type(error).__name__}: {error}".rstrip(": ")
        )
        first_line = what.splitlines()[0] if what else type(error).__name__
        raise InvalidValueError(
            f"config file {path}{_line_in(path, error)}: {first_line}"
        ) from None


def _line_in(path: Path, error: BaseException) -> str:
    """', line N': the last line of `path` that the traceback of `error` passed through."""
    lines = [
        frame.lineno
        for frame in traceback.extract_tb(error.__traceback__)
        if Path(frame.filename).resolve() == path.resolve()
    ]
    return f", line {lines[-1]}" if lines else ""


def resolve(explicit: Mapping[str, Any], *, source: str = "config") -> TrainConfig:
    """Defaults < the model's preset < `explicit` (a config file's values updated by flags)."""
    check_keys(explicit, source)
    if "model" not in explicit:
        raise InvalidValueError(
            "no model given: name one (e.g. `zoo train lenet5`) or set `model` in the config file"
        )
    config = TrainConfig.from_dict(
        {**PRESETS.get(explicit["model"], {}), **explicit}, source=source
    )
    check_for_model(config)
    return config


def resumed(
    saved: Mapping[str, Any],
    explicit: Mapping[str, Any],
    built: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """The saved run's config updated by `explicit`, which may change `RESUMABLE_FIELDS` only.

    `built` is the model config the saved run was built with (its checkpoint's `model_config`,
    decoded): a model argument given with the value the run was built with changes nothing
    (`--model-arg num_classes=10` resumes a run trained on 10 classes).
    """
    explicit = dict(explicit)
    if built is not None and isinstance(explicit.get("model_args"), dict):
        explicit["model_args"] = _unchanged_model_args(saved, explicit["model_args"], built)
    config = TrainConfig.from_dict({**saved, **explicit}, source="resumed config")
    check_for_model(config)
    check_resumable(TrainConfig.from_dict(saved, source="saved config"), config)
    return config


def _unchanged_model_args(
    saved: Mapping[str, Any], given: Mapping[str, Any], built: Mapping[str, Any]
) -> dict[str, Any]:
    """`given` model arguments, as the saved run's wherever they equal what it was built with."""
    saved_args = dict(saved.get("model_args") or {})
    info = model_info(saved["model"])
    # Both through the model's own field types: [2] and (2,) are the same widths.
    was = info.config(**built)
    now = info.config(**{**built, **given})
    return {
        **saved_args,
        **{k: v for k, v in given.items() if k in saved_args or now[k] != was.get(k)},
    }


# What only a model trained on class labels has: the autoencoder's reconstruction has none.
CLASS_LABEL_SETTINGS = ("label_smoothing", "mixup", "cutmix")


def check_for_model(config: TrainConfig) -> None:
    """Raises for what `config.model` cannot take, before anything is loaded or compiled: an
    unknown model (with the closest names), model arguments of the wrong type or out of range
    (each naming the argument), or a classifier's setting on a model without classes."""
    info = model_info(config.model)
    info.module(**info.config(**config.model_args))  # Each model checks its own ranges.
    if info.task != "classification":
        for name in CLASS_LABEL_SETTINGS:
            if getattr(config, name):
                raise InvalidValueError(
                    f"{name} works on class labels; {config.model} is a {info.task} model, "
                    f"which has none (leave {name} at 0), got {getattr(config, name)!r}"
                )


def check_resumable(saved: TrainConfig, config: TrainConfig) -> None:
    """Raises `ValueError` when `config` changes what the saved run is, not only how long."""
    fixed = [k for k in field_names() if k not in RESUMABLE_FIELDS and k != "name"]
    changed = [
        f"{k}={getattr(saved, k)!r} -> {getattr(config, k)!r}"
        for k in fixed
        if getattr(saved, k) != getattr(config, k)
    ]
    if saved.run_name != config.run_name:  # `--name X` resumes the run saved as X by default.
        changed.append(f"name={saved.run_name!r} -> {config.run_name!r}")
    if changed:
        raise InvalidValueError(
            f"--resume cannot change {', '.join(changed)} of the saved run "
            f"{saved.run_name!r}; only {', '.join(sorted(RESUMABLE_FIELDS))} may "
            "change (train under another --name instead)"
        )


def _checked(name: str, value: Any, hint: Any) -> Any:
    """`value` if it has type `hint` (an int is accepted, as a float, where a float is wanted)."""
    if typing.get_origin(hint) is dict:  # `model_args`: the model's own config checks values.
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise InvalidTypeError(f"{name} must be a table of named values, got {value!r}")
        return dict(value)
    if typing.get_origin(hint) is Literal:
        if value not in typing.get_args(hint):
            options = ", ".join(map(repr, typing.get_args(hint)))
            raise InvalidValueError(f"{name} must be one of {options}, got {value!r}")
        return value
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    if float in options and type(value) is int:
        return float(value)
    # bool is an int subclass; `epochs = true` in a file is a mistake, not 1 epoch.
    if not any(type(value) is t for t in options):
        wanted = " or ".join("None" if t is type(None) else t.__name__ for t in options)
        raise InvalidTypeError(f"{name} must be {wanted}, got {type(value).__name__} {value!r}")
    # inf and nan pass many range checks (`mixup >= 0`) but no setting means them.
    if type(value) is float and not math.isfinite(value):
        raise InvalidValueError(f"{name} must be a finite number, got {value!r}")
    return value


def _check_ranges(config: TrainConfig) -> None:
    def need(ok: bool, what: str, value: Any) -> None:
        if not ok:
            raise InvalidValueError(f"{what}, got {value!r}")

    need(config.epochs >= 1, "epochs must be at least 1", config.epochs)
    need(config.batch_size >= 1, "batch_size must be at least 1", config.batch_size)
    need(config.lr > 0, "lr must be positive", config.lr)
    need(0 <= config.momentum < 1, "momentum must be in [0, 1)", config.momentum)
    need(
        0 <= config.warmup_epochs <= config.epochs,
        f"warmup_epochs must be in [0, epochs={config.epochs}]",
        config.warmup_epochs,
    )
    need(config.weight_decay >= 0, "weight_decay must be >= 0", config.weight_decay)
    need(
        0 <= config.label_smoothing < 1, "label_smoothing must be in [0, 1)", config.label_smoothing
    )
    need(
        config.max_train_examples is None or config.max_train_examples >= 1,
        "max_train_examples must be at least 1",
        config.max_train_examples,
    )
    need(
        config.checkpoint_every >= 1, "checkpoint_every must be at least 1", config.checkpoint_every
    )
    need(config.max_to_keep >= 1, "max_to_keep must be at least 1", config.max_to_keep)
    need(
        config.checkpoint_every_steps is None or config.checkpoint_every_steps >= 1,
        "checkpoint_every_steps must be at least 1 (leave it out to save at epoch ends only)",
        config.checkpoint_every_steps,
    )
    need(
        config.data_workers is None or config.data_workers >= 0,
        "data_workers must be >= 0 (0: read in the training process)",
        config.data_workers,
    )
    need(bool(config.model), "model must be a model name", config.model)
    need(
        0 <= config.seed < 2**32,
        "seed must be in [0, 2**32 - 1] (JAX's keys take 32 bits: a larger seed would repeat "
        "the randomness of a smaller one)",
        config.seed,
    )
    need(
        config.name is None or bool(config.name.strip()),
        "name must not be empty (leave --name out to save as MODEL-DATASET)",
        config.name,
    )
    # The recipe's and fine-tuning's fields.
    need(
        config.grad_accum_steps >= 1, "grad_accum_steps must be at least 1", config.grad_accum_steps
    )
    need(
        config.schedule != "onecycle" or config.warmup_epochs > 0,
        "schedule 'onecycle' ramps up over warmup_epochs, which must be > 0 (PyTorch's default "
        "is 30% of the run)",
        config.warmup_epochs,
    )
    need(0 <= config.ema_decay < 1, "ema_decay must be in [0, 1)", config.ema_decay)
    need(config.mixup >= 0, "mixup must be >= 0 (0: off)", config.mixup)
    need(0 <= config.rotate <= 180, "rotate must be in [0, 180] degrees", config.rotate)
    need(0 <= config.zoom < 1, "zoom must be in [0, 1)", config.zoom)
    need(0 <= config.shear < 90, "shear must be in [0, 90) degrees", config.shear)
    need(0 <= config.translate <= 1, "translate must be in [0, 1]", config.translate)
    need(config.elastic_alpha >= 0, "elastic_alpha must be >= 0 (0: off)", config.elastic_alpha)
    need(config.elastic_sigma > 0, "elastic_sigma must be > 0", config.elastic_sigma)
    need(config.cutmix >= 0, "cutmix must be >= 0 (0: off)", config.cutmix)
    for name in ("drop_path_rate", "dropout_rate"):
        rate = getattr(config, name)
        need(rate is None or 0 <= rate < 1, f"{name} must be in [0, 1)", rate)
    need(config.init_from is None or bool(config.init_from), "init_from must be a name", "")
    need(
        0 <= config.warmup_start_factor <= 1,
        "warmup_start_factor must be in [0, 1]",
        config.warmup_start_factor,
    )
    need(
        config.schedule != "onecycle" or config.warmup_start_factor == 0,
        "warmup_start_factor does not apply to schedule 'onecycle', which starts at lr / 25",
        config.warmup_start_factor,
    )
    need(
        config.clip_grad_norm is None or config.clip_grad_norm > 0,
        "clip_grad_norm must be positive (leave it out for no clipping)",
        config.clip_grad_norm,
    )
    need(
        config.train_only is None or all(p.strip() for p in config.train_only.split(",")),
        "train_only must be comma-separated globs, none empty",
        config.train_only,
    )
