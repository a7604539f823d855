"""`zoo train` and `zoo eval`: the training loop and held-out evaluation from the command line.

Every `TrainConfig` field is a flag (`batch_size` -> `--batch-size`), generated from the
dataclass so the two cannot drift apart. Flags left out do not override anything: a value
comes from the flag, else the `--config` file, else the model's preset, else the default.
`--coordinator`, `--num-processes`, `--process-id` and `--heartbeat-timeout` say how this process
joins a multi-process run (`zoo.distributed`); they are launch settings, not config.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from typing import Any, Literal

from zoo import distributed, hub, interrupts, runtime
from zoo.training import api, loop
from zoo.training.config import PRESETS, TrainConfig, field_names, flags, load_config_file
from zoo.training.evaluate import evaluate_saved
from zoo.training.report import format_metrics
from zoo.training.streaming import DataWorkerDied

METAVARS = {int: "N", float: "X", str: "TEXT"}


def register(subparsers: argparse._SubParsersAction) -> None:
    presets = "\n".join(f"  {model}: {as_flags(values)}" for model, values in PRESETS.items())
    parser = subparsers.add_parser(
        "train",
        help="train a model and save it to the registry",
        description="Train a zoo model on a data set, evaluating on its held-out split every\n"
        "epoch and saving to the registry as NAME (default MODEL-DATASET).",
        epilog=f"Model presets (a config file and flags override them):\n{presets}\n\n"
        "Metrics go to runs/NAME.jsonl unless --log says otherwise.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model",
        nargs="?",
        default=argparse.SUPPRESS,
        help="model name (see `zoo list`); may come from --config instead",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="settings file: .json, .toml, or .py defining a dict `config` (a .py file is "
        "run as Python, with all your rights: use only files you trust)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the latest checkpoint of NAME with its saved settings "
        "(only --epochs and where things go may change)",
    )
    _add_config_flags(parser)
    _add_launch_flags(parser)
    parser.set_defaults(run=run_train)

    parser = subparsers.add_parser(
        "eval",
        help="held-out accuracy and loss of a saved model",
        description="Evaluate a registry model on the held-out split of a data set, with the "
        "preprocessing it was trained with.",
    )
    parser.add_argument("name", help="registry name, e.g. lenet5-mnist5k")
    parser.add_argument(
        "--dataset", metavar="NAME", help="data set (default: the one it was trained on)"
    )
    parser.add_argument("--step", type=int, metavar="N", help="saved step (default: the latest)")
    parser.add_argument("--registry", metavar="DIR", help="registry folder")
    parser.add_argument("--data-dir", metavar="DIR", help="TFDS data folder")
    parser.set_defaults(run=run_eval)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    for name, (hint, flag, default) in flags().items():
        if name == "model":
            continue
        help_ = (
            flag.help
            if "default:" in flag.help
            else f"{flag.help} ({_default_text(name, default)})"
        )
        options: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_}
        if typing.get_origin(hint) is dict:
            options.update(action="append", type=model_arg, metavar=flag.metavar)
        elif hint is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(hint) is Literal:
            options["choices"] = typing.get_args(hint)
        else:
            # `int | None` takes an int on the command line (leaving it out means None).
            types_ = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
            options["type"] = next(t for t in types_ if t is not type(None))
            options["metavar"] = flag.metavar or METAVARS[options["type"]]
        parser.add_argument("--" + (flag.name or name.replace("_", "-")), **options)


def _default_text(name: str, default: Any) -> str:
    """'default: 10', or for a field a preset sets, each preset's value and the fallback."""
    by_preset = {model: preset[name] for model, preset in PRESETS.items() if name in preset}
    if not by_preset:
        return f"default: {default}"
    presets = ", ".join(f"{model} {value}" for model, value in by_preset.items())
    return f"default: the model's preset ({presets}), else {default}"


def model_arg(text: str) -> tuple[str, Any]:
    """`key=value` -> (key, value): the value as JSON where it parses (hidden=[128] is a list,
    width=2 an int), else the text itself (act=relu)."""
    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def _add_launch_flags(parser: argparse.ArgumentParser) -> None:
    """How this process joins a multi-process run: launch settings, not part of the run's config
    (the same run may be continued by any number of processes)."""
    group = parser.add_argument_group(
        "several processes (one per host)",
        "Under a cluster JAX detects (Cloud TPU pod slice, SLURM srun, Open MPI,\n"
        "Kubernetes) the processes find each other; elsewhere start one per host with\n"
        "the first three flags. --batch-size stays the global batch.",
    )
    group.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="address of process 0 and a free port on it, the same for all",
    )
    group.add_argument(
        "--num-processes", type=int, metavar="N", help="how many processes train together"
    )
    group.add_argument(
        "--process-id",
        type=int,
        metavar="I",
        help="this process's index, 0 (the one that saves and prints) to N-1",
    )
    group.add_argument(
        "--heartbeat-timeout",
        type=int,
        metavar="SECONDS",
        default=distributed.HEARTBEAT_TIMEOUT_SECONDS,
        help="a process silent this long counts as dead, and the others stop "
        "(default: %(default)s)",
    )


def launch_settings(args: argparse.Namespace) -> distributed.Launch:
    return distributed.Launch(
        coordinator=args.coordinator,
        num_processes=args.num_processes,
        process_id=args.process_id,
        heartbeat_timeout=args.heartbeat_timeout,
    )


def as_flags(settings: dict[str, Any]) -> str:
    """Config values as the flags that set them: {"lr": 0.1, "augment": True} -> --lr 0.1 ..."""
    words = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, dict):  # model_args: one --model-arg each.
            words += [
                f"--model-arg {k}={json.dumps(v, separators=(',', ':'))}" for k, v in value.items()
            ]
        else:
            words.append(f"{flag} {value}")
    return " ".join(words)


def explicit_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The config file's values updated by the flags actually given."""
    settings = load_config_file(args.config) if args.config else {}
    flags = {name: getattr(args, name) for name in field_names() if hasattr(args, name)}
    if "model_args" in flags:  # Each --model-arg overrides that one key of the file's table.
        from_file = settings.get("model_args", {})
        from_file = from_file if isinstance(from_file, dict) else {}  # TrainConfig says why.
        flags["model_args"] = {**from_file, **dict(flags["model_args"])}
    settings.update(flags)
    return settings


def run_train(args: argparse.Namespace) -> int:
    interrupts.report(
        lambda signal: f"zoo train: interrupted ({signal}) before training began; nothing was saved"
    )
    # First: JAX starts its distributed runtime only before any other JAX use.
    distributed.initialize(launch_settings(args))
    return distributed.run_as_peer(lambda: _train(args), command="zoo train")


def _train(args: argparse.Namespace) -> int:
    # A second run of the same job loads its compiled programs instead of compiling them again.
    runtime.enable_compilation_cache()
    settings = explicit_settings(args)
    config = api.configure(resume=args.resume, source=args.config or "command line", **settings)
    before = hub.latest_step(config.run_name, registry=config.registry)
    interrupts.report(lambda signal: interrupted(config, signal, before, resume=args.resume))
    try:
        result = api.train(config, resume=args.resume)
    except (loop.TrainingDiverged, DataWorkerDied) as error:
        print(f"zoo train: error: {error}", file=sys.stderr)
        return 1
    metrics = result.metrics
    held_out = format_metrics(
        metrics, {"val_accuracy": "val_accuracy", "val_loss": "val_loss"}, sep=", "
    )
    if distributed.is_primary():
        print(
            f"saved {result.name} step {result.step} to {hub.registry_root(config.registry)}: "
            f"{held_out} ({result.wall_seconds:.1f} s)"
        )
    return 0


def interrupted(config: TrainConfig, signal: str, before: int | None, *, resume: bool) -> str:
    """The line of a run stopped by `signal`: the step it saved, and how to continue it, or
    that it saved none (`before`: the name's latest step when the run began)."""
    name = config.run_name
    latest = hub.latest_step(name, registry=config.registry)
    if latest is not None and (resume or latest != before):
        registry = f" --registry {config.registry}" if config.registry else ""
        return (
            f"zoo train: interrupted ({signal}); step {latest} of {name} is saved: continue "
            f"with `zoo train --resume --name {name}{registry}`"
        )
    if latest is not None:
        return (
            f"zoo train: interrupted ({signal}) before this run saved a checkpoint; {name} "
            f"still loads step {latest}, of an earlier run"
        )
    return (
        f"zoo train: interrupted ({signal}) before its first checkpoint; nothing of {name} "
        "was saved"
    )


def run_eval(args: argparse.Namespace) -> int:
    result = evaluate_saved(
        args.name,
        dataset=args.dataset,
        step=args.step,
        registry=args.registry,
        data_dir=args.data_dir,
    )
    top5 = "val_top5_accuracy" in result
    held_out = format_metrics(
        result,
        {
            "val_accuracy": "top-1" if top5 else "accuracy",
            "val_top5_accuracy": "top-5",
            "val_loss": "loss",
        },
        sep=", ",
    )
    names = result.get("class_names")
    classes = f", {len(names):,} classes: {_first(names)}" if top5 else ""
    print(
        f"{args.name} step {result['step']} on {result['dataset']} held-out split "
        f"({result['examples']:,} images{classes}): {held_out}"
    )
    if "class_accuracy" in result:
        print(_per_class_table(names, result["class_accuracy"], result["class_examples"]))
    return 0


def _first(names: tuple[str, ...], count: int = 3) -> str:
    return ", ".join(names[:count]) + (", ..." if len(names) > count else "")


def _per_class_table(
    names: tuple[str, ...], accuracies: list[float | None], examples: list[int]
) -> str:
    """Each class's accuracy and images, one class a line, names left-aligned."""
    width = max(len("class"), *map(len, names))
    lines = [f"  {'class'.ljust(width)}  accuracy  images"]
    for name, accuracy, count in zip(names, accuracies, examples, strict=True):
        shown = "-" if accuracy is None else f"{accuracy:.2%}"
        lines.append(f"  {name.ljust(width)}  {shown:>8}  {count:>6,}")
    return "\n".join(lines)
