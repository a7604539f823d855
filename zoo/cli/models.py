"""`zoo list`, `zoo info` and `zoo summary`: the registry from the command line."""

from __future__ import annotations

import argparse

from zoo.errors import InvalidValueError
from zoo.registry import list_models, model_info
from zoo.summary import check_input_shape, summary


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("list", help="list registered models")
    parser.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'resnet*'")
    parser.set_defaults(run=run_list)

    parser = subparsers.add_parser("info", help="a model's input, classes, paper and params")
    parser.add_argument("name")
    parser.set_defaults(run=run_info)

    parser = subparsers.add_parser("summary", help="per-layer shapes, params and MACs")
    parser.add_argument("name")
    parser.add_argument(
        "--input-shape",
        type=parse_shape,
        metavar="H,W,C",
        help="input height, width and channels (default: the model's own)",
    )
    parser.add_argument("--num-classes", type=int, help="override the output size")
    parser.set_defaults(run=run_summary)


def parse_shape(text: str) -> tuple[int, int, int]:
    """'H,W,C' as a shape (`zoo.summary.check_input_shape`'s rule); a negative value reaches
    here too (`zoo.cli.Parser`)."""
    try:
        shape = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected H,W,C (three integers) such as 224,224,3, got {text!r}"
        ) from None
    try:
        return check_input_shape(tuple(shape))
    except InvalidValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def run_list(args: argparse.Namespace) -> int:
    names = list_models(args.pattern)
    if not names:
        raise InvalidValueError(f"no model matches {args.pattern!r}; try 'zoo list' for all names")
    width = max(map(len, names))
    for name in names:
        print(f"{name.ljust(width)}  {model_info(name).description}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    info = model_info(args.name)
    print(f"name:             {info.name}")
    print(f"description:      {info.description}")
    print(f"paper:            {info.paper}")
    print(f"input (H, W, C):  {info.input_shape}{' (fixed)' if info.fixed_input_size else ''}")
    print(f"num_classes:      {info.num_classes}")
    if info.reference_params is not None:
        print(f"reference params: {info.reference_params:,}")
    print(f"config:           {info.config()}")
    return 0


def run_summary(args: argparse.Namespace) -> int:
    overrides = {} if args.num_classes is None else {"num_classes": args.num_classes}
    print(summary(args.name, args.input_shape, **overrides))
    return 0
