"""The per-layer summary and the `zoo list / info / summary` commands."""

from __future__ import annotations

import pytest

import zoo
from zoo.cli import main


def test_summary_table_shows_layers_and_totals():
    table = zoo.summary("lenet5")
    assert [layer.name for layer in table.layers] == [
        "c1",
        "s2",
        "c3",
        "s4",
        "flatten",
        "c5",
        "f6",
        "output",
    ]
    assert [layer.params for layer in table.layers if layer.params] == [
        156,
        2_416,
        48_120,
        10_164,
        850,
    ]
    text = str(table)
    assert "28x28x6" in text and "61,706" in text and "matches the published count" in text


def test_summary_at_another_input_size_and_class_count():
    table = zoo.summary("resnet18", (32, 32, 3), num_classes=10)
    assert table.layers[0].output_shape == (16, 16, 64)
    assert table.total_params == 11_689_512 - 512 * 990 - 990
    assert "published" not in str(table)


def test_summary_rejects_a_wrong_input_shape():
    with pytest.raises(ValueError, match="32x32x1"):
        zoo.summary("lenet5", (28, 28, 1))
    with pytest.raises(ValueError, match="HxWx3"):
        zoo.summary("resnet18", (64, 64, 1))


def test_cli_list_summary_and_info(capsys):
    assert main(["list", "resnet5*"]) == 0
    assert capsys.readouterr().out.split()[::1][0] == "resnet50"
    assert main(["summary", "resnet50"]) == 0
    assert "25,557,032" in capsys.readouterr().out
    assert main(["summary", "resnet18", "--input-shape", "64,64,3", "--num-classes", "10"]) == 0
    assert "10" in capsys.readouterr().out.splitlines()[-1]
    assert main(["info", "alexnet_2012"]) == 0
    assert "60,965,224" in capsys.readouterr().out


def test_cli_errors_are_one_line_with_exit_status_2(capsys):
    assert main(["summary", "resnet5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean" in err
    assert main(["list", "nope*"]) == 2
    with pytest.raises(SystemExit) as exit_:
        main(["summary", "resnet18", "--input-shape", "64x64"])
    assert exit_.value.code == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["--input-shape", "99999999999999999999,32,3"],
        ["--input-shape", "-1,28,1"],  # Once swallowed by argparse as an option.
        ["--input-shape=-1,28,1"],
        ["--input-shape", "0,32,3"],
        ["--input-shape", "65537,32,3"],
        ["--input-shape", "32,32"],
        ["--input-shape", "3.5,32,3"],
    ],
)
def test_a_bad_input_shape_is_one_line_naming_what_is_expected(capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        main(["summary", "resnet18", *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("zoo summary: error: argument --input-shape: ")
    assert "positive integers of at most 65,536" in err or "three integers" in err, err


def test_the_python_summary_refuses_the_same_shapes():
    for shape in ((10**20, 32, 3), (-1, 28, 3), (32, 32), (32.0, 32, 3), "32,32,3"):
        with pytest.raises(zoo.errors.InvalidValueError, match="at most 65,536"):
            zoo.summary("resnet18", shape)
    assert zoo.summary("resnet18", [64, 64, 3]).layers  # A list is a shape too.


def test_an_argparse_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "mlp", "--epochs", "two"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err == (
        "zoo train: error: argument --epochs: invalid int value: 'two' (see `zoo train --help`)\n"
    )
