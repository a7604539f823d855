"""`zoo.plot` and `zoo plot`: every picture is a real PNG of the size its module sets.

Checkpoints are made here in a temporary registry (untrained weights draw valid pictures), so
nothing depends on shipped checkpoints or the network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import PIL.Image
import pytest

import zoo
from zoo import hub
from zoo.cli import main
from zoo.errors import InvalidValueError, NotFoundError
from zoo.plot import feature_maps, kernels, latent_space, sobel, training_curves
from zoo.plot.figure import DPI
from zoo.preprocessing import Preprocessing

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GREY_DIGITS = Preprocessing((28, 28, 1), (32, 32, 1), (0.13,), (0.31,))


def epoch_record(epoch: int, *, accuracy: bool = True) -> dict:
    record = {"epoch": epoch, "train_loss": 1.0 / epoch, "val_loss": 1.2 / epoch}
    if accuracy:
        record |= {"train_accuracy": 1 - 0.5 / epoch, "val_accuracy": 1 - 0.6 / epoch}
    return record


def save(
    registry: Path,
    name: str,
    model_name: str,
    preprocessing: Preprocessing,
    config: dict | None = None,
    **meta,
) -> None:
    # Random weights of the right shapes: running `init` eagerly costs seconds per model on CPU,
    # and any weights draw a valid picture.
    model = zoo.create_model(model_name, **(config or {}))
    inputs = jax.ShapeDtypeStruct((1, *preprocessing.input_shape), np.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), inputs)
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda leaf: rng.normal(0, 0.1, leaf.shape).astype(leaf.dtype), shapes)
    hub.save(
        name,
        model_name=model_name,
        model_config=config or {},
        variables=variables,
        step=1,
        registry=registry,
        meta={"dataset": "mnist5k", "preprocessing": preprocessing.to_dict(), **meta},
    )


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("registry")
    history = [epoch_record(epoch) for epoch in (1, 2, 3)]
    save(folder, "lenet", "lenet5", GREY_DIGITS, history=history)
    save(folder, "lenet-no-history", "lenet5", GREY_DIGITS)
    save(
        folder,
        "alexnet",
        "alexnet_torchvision",
        Preprocessing((32, 32, 3), (224, 224, 3), (0.5,) * 3, (0.25,) * 3),
        {"hidden": 16},
    )
    save(
        folder,
        "autoencoder",
        "conv_autoencoder",
        Preprocessing((28, 28, 1), (28, 28, 1), (0.13,), (0.31,)),
        history=[epoch_record(epoch, accuracy=False) for epoch in (1, 2)],
    )
    return folder


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Default outputs land in plots/ under the current folder: make that a fresh one."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def digit_png(tmp_path: Path) -> Path:
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 12:16] = 255  # A "1": a bar with sharp vertical edges.
    PIL.Image.fromarray(digit).save(tmp_path / "digit.png")
    return tmp_path / "digit.png"


def saved_picture(registry: Path, name: str, picture: str) -> Path:
    """The default path of a picture of step 1 of checkpoint `name`."""
    return Path("plots") / registry.name / f"{name}-step_1-{picture}.png"


def assert_png(path: Path, inches: tuple[float, float]) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with PIL.Image.open(path) as image:
        assert image.size == (round(inches[0] * DPI), round(inches[1] * DPI))


# --- curves -----------------------------------------------------------------------------------


def test_curves_of_a_classifier_show_loss_and_accuracy(registry):
    path = zoo.plot.curves("lenet", registry=registry)
    assert path == saved_picture(registry, "lenet", "curves")
    assert_png(path, (2 * training_curves.PANEL_WIDTH, training_curves.HEIGHT))


def test_curves_of_a_reconstruction_run_show_the_loss_only(registry, tmp_path):
    path = zoo.plot.curves("autoencoder", registry=registry, out=tmp_path / "ae.png")
    assert path == tmp_path / "ae.png"
    assert_png(path, (training_curves.PANEL_WIDTH, training_curves.HEIGHT))


def test_curves_from_a_log_keep_the_last_record_of_each_epoch(tmp_path):
    records = [
        {"event": "start", "config": {}},
        {"event": "epoch", **epoch_record(1)},
        {"event": "epoch", **epoch_record(2)},
        {"event": "stopped", "reason": "x"},
        {"event": "start", "resumed_at_epoch": 1},  # Resumed: epoch 2 again.
        {"event": "epoch", **epoch_record(2), "val_loss": 0.01},
        {"event": "epoch", **epoch_record(3)},
    ]
    log = tmp_path / "run.jsonl"
    log.write_text("".join(json.dumps(record) + "\n" for record in records))

    history = training_curves.read_log(log)

    assert [r["epoch"] for r in history] == [1, 2, 3] and history[1]["val_loss"] == 0.01
    assert_png(
        zoo.plot.curves("any-name", log=log),
        (2 * training_curves.PANEL_WIDTH, training_curves.HEIGHT),
    )


def test_curves_without_a_saved_history_ask_for_the_log(registry):
    with pytest.raises(ValueError, match=r"no meta\['history'\].*--log runs/lenet-no-history"):
        zoo.plot.curves("lenet-no-history", registry=registry)
    with pytest.raises(KeyError, match="no checkpoint named 'nope'"):
        zoo.plot.curves("nope", registry=registry)


def test_a_log_that_is_not_json_names_the_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"event": "start"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a JSON line"):
        zoo.plot.curves("x", log=tmp_path / "bad.jsonl")


def test_a_log_that_is_missing_a_folder_or_binary_is_a_named_error(tmp_path):
    (tmp_path / "binary.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    (tmp_path / "no-number.jsonl").write_text('{"event": "epoch", "val_loss": 1.0}\n')
    for log, error, message in [
        ("missing.jsonl", NotFoundError, r"missing\.jsonl: no such file"),
        (".", InvalidValueError, r": a folder, not a `zoo train` JSONL metrics log"),
        ("binary.jsonl", InvalidValueError, r"binary\.jsonl:1: not a JSON line"),
        (
            "no-number.jsonl",
            InvalidValueError,
            r"no-number\.jsonl:1: an epoch record without its number",
        ),
    ]:
        with pytest.raises(error, match=message):
            zoo.plot.curves("x", log=tmp_path / log)


# --- filters ----------------------------------------------------------------------------------


def test_filters_default_to_the_first_convolution(registry):
    path = zoo.plot.filters("lenet", registry=registry)
    assert path == saved_picture(registry, "lenet", "filters-c1")
    # Six 5x5 kernels: 3 columns by 2 rows of tiles, one cell apart.
    assert_png(path, (kernels.WIDTH, kernels.figure_height((2 * 6 - 1, 3 * 6 - 1))))


def test_rgb_kernels_fill_a_square_grid(registry):
    path = zoo.plot.filters("alexnet", registry=registry)
    assert path == saved_picture(registry, "alexnet", "filters-conv1")
    # 64 kernels of 11x11x3 as 8x8 tiles: a square grid.
    assert kernels.figure_height((95, 95)) == kernels.GRID_WIDTH + kernels.TITLE_HEIGHT
    assert_png(path, (kernels.WIDTH, kernels.figure_height((95, 95))))


def test_a_deeper_layer_shows_every_channel_pair(registry):
    path = zoo.plot.filters("lenet", layer="c3", registry=registry)
    # C3: 6 input rows by 16 output columns of 5x5 tiles.
    assert_png(path, (kernels.WIDTH, kernels.figure_height((6 * 6 - 1, 16 * 6 - 1))))


def test_filters_of_a_layer_that_is_no_convolution_list_the_convolutions(registry):
    with pytest.raises(
        ValueError, match="'f6' is not a convolution of lenet5; its convolutions are c1, c3"
    ):
        zoo.plot.filters("lenet", layer="f6", registry=registry)


# --- features ---------------------------------------------------------------------------------


def test_features_show_a_row_per_stage(registry, digit_png):
    path = zoo.plot.features("lenet", digit_png, registry=registry)
    assert path == saved_picture(registry, "lenet", "features-digit")
    rows = len(zoo.feature_stages("lenet5"))
    assert_png(
        path, (feature_maps.WIDTH, feature_maps.TITLE_HEIGHT + rows * feature_maps.ROW_HEIGHT)
    )


def test_features_convert_an_image_to_the_models_input(registry, tmp_path):
    grey_wrong_size = np.full((20, 20), 128, np.uint8)  # AlexNet wants 32x32 RGB raw images.
    path = zoo.plot.features(
        "alexnet", grey_wrong_size, channels=4, registry=registry, out=tmp_path / "a.png"
    )
    rows = len(zoo.feature_stages("alexnet_torchvision"))
    assert_png(
        path, (feature_maps.WIDTH, feature_maps.TITLE_HEIGHT + rows * feature_maps.ROW_HEIGHT)
    )


# --- edges ------------------------------------------------------------------------------------


def test_edges_of_a_grey_png(digit_png):
    path = zoo.plot.edges(digit_png)
    assert path == Path("plots/digit-edges.png")
    assert_png(path, (sobel.WIDTH, sobel.figure_height((28, 28))))


def test_edges_of_a_colour_npy(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (40, 80, 3), np.uint8)
    np.save(tmp_path / "photo.npy", image)
    path = zoo.plot.edges(tmp_path / "photo.npy")
    assert path == Path("plots/photo-edges.png")
    assert_png(path, (sobel.WIDTH, sobel.figure_height((40, 80))))


def test_images_that_are_not_raw_pixels_are_refused(tmp_path):
    np.save(tmp_path / "float.npy", np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match=r"expected raw uint8 images \(0\.\.255\), got float32"):
        zoo.plot.edges(tmp_path / "float.npy")
    with pytest.raises(ValueError, match=r"one image of shape .* got \(2, 8, 8, 1\)"):
        zoo.plot.edges(np.zeros((2, 8, 8, 1), np.uint8))


# --- latent -----------------------------------------------------------------------------------


def test_latent_of_an_autoencoder(registry, mnist5k_env):
    path = zoo.plot.latent("autoencoder", grid=4, registry=registry)
    assert path == saved_picture(registry, "autoencoder", "latent")
    assert_png(path, (latent_space.WIDTH, latent_space.HEIGHT))


def test_latent_of_a_classifier_is_a_clear_error(registry):
    with pytest.raises(ValueError, match="lenet is a lenet5, which has no encode/decode"):
        zoo.plot.latent("lenet", registry=registry)


def test_pictures_of_one_name_in_two_registries_do_not_overwrite_each_other(
    registry, tmp_path, digit_png
):
    retrained = tmp_path / "retrained"
    save(retrained, "lenet", "lenet5", GREY_DIGITS, history=[epoch_record(1)])
    for draw in (
        zoo.plot.curves,
        zoo.plot.filters,
        lambda name, registry: zoo.plot.features(name, digit_png, registry=registry),
    ):
        shipped, own = (draw("lenet", registry=folder) for folder in (registry, retrained))
        assert shipped != own and shipped.is_file() and own.is_file()
        assert own.parts[:2] == ("plots", "retrained")


# --- where pictures go ------------------------------------------------------------------------


def test_an_out_that_cannot_be_written_is_refused_before_any_work(tmp_path, digit_png):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(NotADirectoryError, match="a-file is a file, not a folder"):
        zoo.plot.edges(digit_png, out=tmp_path / "a-file" / "deeper" / "edges.png")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ValueError, match=r"folder\.png: it is a folder"):
        zoo.plot.edges(digit_png, out=tmp_path / "folder.png")
    assert not (tmp_path / "plots").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_folder_is_refused(tmp_path, digit_png):
    read_only = tmp_path / "read-only"
    read_only.mkdir(mode=0o555)
    with pytest.raises(PermissionError, match=r"read-only is not writable \(Permission denied\)"):
        zoo.plot.edges(digit_png, out=read_only / "edges.png")


# --- command line and imports -----------------------------------------------------------------


def test_cli_prints_the_path_of_each_picture(registry, digit_png, capsys):
    commands = [
        ["curves", "lenet"],
        ["filters", "lenet", "--layer", "c3"],
        ["features", "lenet", str(digit_png), "--channels", "2"],
        ["edges", str(digit_png), "--out", "edges/digit.png"],
    ]
    for command in commands:
        picture, *rest = command
        options = [] if picture == "edges" else ["--registry", str(registry)]
        assert main(["plot", picture, *rest, *options]) == 0
        path = Path(capsys.readouterr().out.strip())
        assert path.is_file() and path.read_bytes()[:8] == PNG_SIGNATURE
    assert path == Path("edges/digit.png")


def test_cli_errors_are_one_line(registry, capsys):
    assert main(["plot", "latent", "lenet", "--registry", str(registry)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zoo plot: error: lenet is a lenet5") and err.count("\n") == 1
    assert (
        main(["plot", "filters", "lenet", "--out", "kernels.txt", "--registry", str(registry)]) == 2
    )
    assert "expected a file name ending in .png" in capsys.readouterr().err


def test_cli_bad_images_are_one_line_errors_naming_the_file(registry, bad_image_files, capsys):
    for path, message in bad_image_files.items():
        for command in (["edges", str(path)], ["features", "lenet", str(path)]):
            options = ["--registry", str(registry)] if command[0] == "features" else []
            assert main(["plot", *command, *options]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"zoo plot: error: {path}: ") and message in err
            assert err.count("\n") == 1


def test_cli_refuses_an_out_under_a_file_in_one_line(registry, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    out = str(tmp_path / "a-file" / "kernels.png")
    assert main(["plot", "filters", "lenet", "--out", out, "--registry", str(registry)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zoo plot: error: cannot save a picture as") and err.count("\n") == 1


def test_importing_zoo_and_the_cli_leaves_matplotlib_unloaded():
    code = "import sys, zoo, zoo.cli; zoo.cli.build_parser(); print('matplotlib' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_a_picture_never_lands_in_a_registry_and_a_failed_save_keeps_the_old_one(
    registry, digit_png, tmp_path, capsys, user_registry, monkeypatch
):
    step = hub.step_folder("lenet", registry=registry)
    targets = [
        (["curves", "lenet", "--registry", str(registry)], step / "meta.json"),
        (["curves", "lenet", "--registry", str(registry)], registry / "curves.png"),
        (["edges", str(digit_png)], step / "edges.png"),  # No --registry: found by its files.
        (["edges", str(digit_png)], user_registry / "edges.png"),
        (["edges", str(digit_png)], hub.shipped_root() / "edges.png"),
    ]
    manifest = (step / "manifest.json").read_bytes()
    for argv, out in targets:
        assert main(["plot", *argv, "--out", str(out)]) == 2, out
        err = capsys.readouterr().err
        assert err.startswith(f"zoo plot: error: cannot save a picture as {out}: it is inside ")
        assert err.count("\n") == 1
        assert not out.exists() or out.name == "meta.json"
    assert (step / "manifest.json").read_bytes() == manifest
    hub.load("lenet", registry=registry)  # Still verifies.

    out = tmp_path / "edges.png"
    out.write_bytes(b"an older picture")
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "disk full")))
    assert main(["plot", "edges", str(digit_png), "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"zoo plot: error: cannot write {out}: disk full\n"
    assert out.read_bytes() == b"an older picture" and sorted(tmp_path.iterdir()) == sorted(
        [out, digit_png]
    )
