"""`zoo plot PICTURE`: the pictures of `zoo.plot` from the command line, one PNG each."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="draw a picture of a saved model or an image (PNG)",
        description="Draw one picture and print the path of the PNG it wrote (default: "
        "plots/REGISTRY/NAME-step_N-PICTURE.png under the current folder, REGISTRY being the "
        "registry folder's name).",
    )
    pictures = parser.add_subparsers(dest="picture", required=True, metavar="PICTURE")

    picture = pictures.add_parser(
        "curves",
        help="training and held-out loss and accuracy per epoch",
        description="Loss and accuracy per epoch of a training run: the history saved with "
        "checkpoint NAME, or the JSONL metrics log given with --log.",
    )
    _add_checkpoint(picture)
    picture.add_argument(
        "--log",
        metavar="FILE",
        type=Path,
        help="a `zoo train` JSONL metrics log to plot instead of the history "
        "saved with the checkpoint (e.g. runs/NAME.jsonl)",
    )
    _add_out(picture)
    picture.set_defaults(run=run_curves)

    picture = pictures.add_parser(
        "filters", help="the learned kernels of a convolution (default: the first)"
    )
    _add_checkpoint(picture)
    picture.add_argument(
        "--layer",
        metavar="PATH",
        help="the convolution's module path, e.g. c1, conv1, "
        "stage1_block0/conv1 (default: the model's first)",
    )
    _add_out(picture)
    picture.set_defaults(run=run_filters)

    picture = pictures.add_parser(
        "features", help="each convolutional stage's feature maps for one image"
    )
    _add_checkpoint(picture)
    _add_image(picture)
    picture.add_argument(
        "--channels",
        type=int,
        default=8,
        metavar="K",
        help="channels shown per stage, the first K (default: 8)",
    )
    _add_out(picture)
    picture.set_defaults(run=run_features)

    picture = pictures.add_parser(
        "edges", help="the lecture's Sobel edge detection (K1, K2, magnitude) on an image"
    )
    _add_image(picture)
    _add_out(picture)
    picture.set_defaults(run=run_edges)

    picture = pictures.add_parser(
        "latent",
        help="an autoencoder's 2-D latent space: labelled codes and decodes",
        description="Held-out images of the data set the autoencoder trained on, scattered at "
        "their 2-D codes and coloured by label, beside the decoder's images over a "
        "grid of codes.",
    )
    _add_checkpoint(picture)
    picture.add_argument(
        "--grid", type=int, default=12, metavar="N", help="decoded images per side (default: 12)"
    )
    picture.add_argument("--data-dir", metavar="DIR", help="TFDS data folder")
    _add_out(picture)
    picture.set_defaults(run=run_latent)


def _add_checkpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the checkpoint name (see 'zoo checkpoints')")
    parser.add_argument("--step", type=int, metavar="N", help="saved step (default: the latest)")
    parser.add_argument(
        "--registry",
        metavar="DIR",
        type=Path,
        help="the registry folder (default: $ZOO_REGISTRY, else checkpoints/)",
    )


def _add_image(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "image", type=Path, help="an image file (.png, .jpg, ...) or a .npy of one raw uint8 image"
    )


def _add_out(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", metavar="PNG", type=Path, help="where to write the picture (default: under plots/)"
    )


# matplotlib loads inside each command, not at registration: `zoo --help` stays fast.
def run_curves(args: argparse.Namespace) -> None:
    from zoo import plot

    print(
        plot.curves(args.name, log=args.log, out=args.out, step=args.step, registry=args.registry)
    )


def run_filters(args: argparse.Namespace) -> None:
    from zoo import plot

    print(
        plot.filters(
            args.name, layer=args.layer, out=args.out, step=args.step, registry=args.registry
        )
    )


def run_features(args: argparse.Namespace) -> None:
    from zoo import plot

    print(
        plot.features(
            args.name,
            args.image,
            channels=args.channels,
            out=args.out,
            step=args.step,
            registry=args.registry,
        )
    )


def run_edges(args: argparse.Namespace) -> None:
    from zoo import plot

    print(plot.edges(args.image, out=args.out))


def run_latent(args: argparse.Namespace) -> None:
    from zoo import plot

    print(
        plot.latent(
            args.name,
            grid=args.grid,
            out=args.out,
            step=args.step,
            registry=args.registry,
            data_dir=args.data_dir,
        )
    )
