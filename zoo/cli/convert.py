"""`zoo import-torchvision`: a torchvision state dict into the checkpoint registry."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from zoo import hub
from zoo.convert.torchvision import (
    ARCHS,
    IMAGENET_CLASSES,
    convert_state_dict,
    imagenet_categories,
    load_state_dict,
    torchvision_arch,
)
from zoo.errors import InvalidValueError, NotFoundError
from zoo.hub.records import check_class_names


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import-torchvision",
        help="convert a torchvision .pth state dict and save it in the registry",
        description="Loads the tensors of a torchvision state dict (no code is run), converts "
        "them into the matching zoo model's variables and saves them as NAME, step 0, with "
        "ImageNet preprocessing (torchvision's mean and std, at the input size of its weights' "
        "transforms: 224x224x3 but for EfficientNet B1-B7) and, for a 1,000-class head, "
        "ImageNet's category names from torchvision (nothing is downloaded).",
    )
    parser.add_argument("arch", metavar="ARCH", help=f"one of: {', '.join(ARCHS)}")
    parser.add_argument("state_dict", metavar="STATE_DICT.pth", type=Path)
    parser.add_argument("--name", required=True, help="the registry name to save it as")
    parser.add_argument(
        "--class-names",
        metavar="FILE",
        type=Path,
        help="a text file naming the classes in output order, one per line (default: "
        "ImageNet's categories for a 1,000-class head; else none, and classes go by their ids)",
    )
    parser.add_argument(
        "--registry",
        metavar="DIR",
        type=Path,
        help="the registry folder (default: $ZOO_REGISTRY, else ~/.local/share/jax-zoo/registry)",
    )
    parser.set_defaults(run=run_import_torchvision)


def run_import_torchvision(args: argparse.Namespace) -> int:
    torchvision_arch(args.arch)  # An unknown arch fails before a large file is read.
    given = None if args.class_names is None else read_class_names(args.class_names)
    converted = convert_state_dict(args.arch, load_state_dict(args.state_dict))
    classes = converted.model_config["num_classes"]
    if given is not None:
        names = check_class_names(given, classes, str(args.class_names))
        named = f", classes named by {args.class_names}"
    elif classes == IMAGENET_CLASSES:
        names, named = imagenet_categories(args.arch), ", ImageNet's class names"
    else:
        names, named = None, f", {classes} classes without names (--class-names FILE names them)"
    record = hub.save(
        args.name,
        model_name=converted.model_name,
        model_config=converted.model_config,
        variables=converted.variables,
        step=0,
        meta={
            "source": "torchvision",
            "arch": args.arch,
            "state_dict_file": args.state_dict.name,
            "state_dict_sha256": _sha256(args.state_dict),
            "preprocessing": torchvision_arch(args.arch).preprocessing.to_dict(),
            **({} if names is None else {hub.CLASS_NAMES: list(names)}),
        },
        registry=args.registry,
    )
    print(
        f"saved torchvision {args.arch} as {record.name} (zoo {record.model_name}, "
        f"{record.params:,} params{named}) in {record.path}"
    )
    return 0


def read_class_names(path: Path) -> list[str]:
    """The class names in text file `path`, one a line (trailing blank lines ignored)."""
    if not path.is_file():
        raise NotFoundError(f"class names file {path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8").rstrip("\n").split("\n")
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidValueError(f"class names file {path}: not readable text ({error})") from None
    names = [line.strip() for line in lines]
    if "" in names:
        raise InvalidValueError(
            f"class names file {path}: line {names.index('') + 1} is empty; give one name a line"
        )
    return names


def _sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()
