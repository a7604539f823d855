"""`zoo import-torchvision`: a torchvision state dict into the checkpoint registry."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from zoo import hub
from zoo.convert.torchvision import (
    ARCHS,
    convert_state_dict,
    load_state_dict,
    torchvision_arch,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import-torchvision",
        help="convert a torchvision .pth state dict and save it in the registry",
        description="Loads the tensors of a torchvision state dict (no code is run), converts "
        "them into the matching zoo model's variables and saves them as NAME, step 0, with "
        "ImageNet preprocessing (torchvision's mean and std, at the input size of its weights' "
        "transforms: 224x224x3 but for EfficientNet B1-B7).",
    )
    parser.add_argument("arch", metavar="ARCH", help=f"one of: {', '.join(ARCHS)}")
    parser.add_argument("state_dict", metavar="STATE_DICT.pth", type=Path)
    parser.add_argument("--name", required=True, help="the registry name to save it as")
    parser.add_argument(
        "--registry",
        metavar="DIR",
        type=Path,
        help="the registry folder (default: $ZOO_REGISTRY, else ~/.local/share/jax-zoo/registry)",
    )
    parser.set_defaults(run=run_import_torchvision)


def run_import_torchvision(args: argparse.Namespace) -> int:
    torchvision_arch(args.arch)  # An unknown arch fails before a large file is read.
    converted = convert_state_dict(args.arch, load_state_dict(args.state_dict))
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
        },
        registry=args.registry,
    )
    print(
        f"saved torchvision {args.arch} as {record.name} (zoo {record.model_name}, "
        f"{record.params:,} params) in {record.path}"
    )
    return 0


def _sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()
