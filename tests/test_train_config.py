"""TrainConfig: validation, presets, config files, flag precedence and what resume may change."""

from __future__ import annotations

import argparse
import json
import math
import re

import jax
import jax.numpy as jnp
import pytest

import zoo
from zoo.cli import training as commands
from zoo.errors import InvalidValueError
from zoo.training import configure
from zoo.training.config import (
    PRESETS,
    RESUMABLE_FIELDS,
    TrainConfig,
    flags,
    load_config_file,
    resolve,
    resumed,
)


def test_defaults_and_run_name():
    config = TrainConfig(model="mlp")
    assert config.run_name == "mlp-mnist5k"
    assert TrainConfig(model="mlp", name="mine").run_name == "mine"
    assert str(config.log_path) == "runs/mlp-mnist5k.jsonl"


def test_int_is_accepted_where_a_float_is_wanted():
    config = TrainConfig(model="mlp", lr=1, warmup_epochs=0)
    assert isinstance(config.lr, float) and isinstance(config.warmup_epochs, float)


@pytest.mark.parametrize(
    ("values", "error", "message"),
    [
        ({"epochs": -1}, ValueError, "epochs must be at least 1, got -1"),
        ({"epochs": 0}, ValueError, "epochs must be at least 1"),
        ({"batch_size": 0}, ValueError, "batch_size must be at least 1"),
        ({"lr": 0.0}, ValueError, "lr must be positive"),
        ({"label_smoothing": 1.0}, ValueError, "label_smoothing must be in [0, 1)"),
        ({"warmup_epochs": 11.0}, ValueError, "warmup_epochs must be in [0, epochs=10]"),
        ({"epochs": "3"}, TypeError, "epochs must be int, got str '3'"),
        ({"epochs": True}, TypeError, "epochs must be int, got bool"),
        ({"lr": "0.1"}, TypeError, "lr must be float, got str"),
        ({"augment": 1}, TypeError, "augment must be bool, got int"),
        ({"optimizer": "adam"}, ValueError, "optimizer must be one of 'sgd', 'adamw', got 'adam'"),
        ({"precision": "fp16"}, ValueError, "precision must be one of 'fp32', 'bf16'"),
        ({"max_train_examples": 2.5}, TypeError, "max_train_examples must be int or None"),
    ],
)
def test_bad_values_name_the_field_and_what_is_allowed(values, error, message):
    with pytest.raises(error) as info:
        TrainConfig(model="mlp", **values)
    assert message in str(info.value)


def test_unknown_key_suggests_the_closest_one():
    with pytest.raises(KeyError) as info:
        TrainConfig.from_dict({"model": "mlp", "batchsize": 32}, source="my.toml")
    message = str(info.value)
    assert "my.toml: unknown key 'batchsize'" in message and "'batch_size'" in message


def test_every_preset_is_a_registered_model_with_valid_values():
    for model, values in PRESETS.items():
        assert model in zoo.list_models()
        TrainConfig(model=model, **values)


def test_precedence_defaults_then_preset_then_explicit():
    config = resolve({"model": "lenet5", "epochs": 3})
    assert config.epochs == 3  # explicit
    assert config.lr == PRESETS["lenet5"]["lr"]  # preset
    assert config.seed == 0  # default
    with pytest.raises(ValueError, match="no model given"):
        resolve({"epochs": 3})


@pytest.mark.parametrize("suffix", [".json", ".toml", ".py"])
def test_config_files(tmp_path, suffix):
    path = tmp_path / f"run{suffix}"
    text = {
        ".json": json.dumps({"model": "mlp", "lr": 0.5, "augment": True}),
        ".toml": 'model = "mlp"\nlr = 0.5\naugment = true\n',
        ".py": 'config = {"model": "mlp", "lr": 0.5, "augment": True}\n',
    }[suffix]
    path.write_text(text)
    assert load_config_file(path) == {"model": "mlp", "lr": 0.5, "augment": True}


def test_config_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_config_file(tmp_path / "missing.toml")
    (tmp_path / "a.yaml").write_text("model: mlp")
    with pytest.raises(ValueError, match=r"unknown format '\.yaml'"):
        load_config_file(tmp_path / "a.yaml")
    (tmp_path / "b.toml").write_text('model = "mlp"\nepoch = 3\n')
    with pytest.raises(KeyError, match="unknown key 'epoch'"):
        load_config_file(tmp_path / "b.toml")
    (tmp_path / "broken.json").write_text('{"model": "mlp",}')
    with pytest.raises(ValueError, match=r"config file .*broken\.json: .*line 1"):
        load_config_file(tmp_path / "broken.json")
    (tmp_path / "c.py").write_text("settings = {}\n")
    with pytest.raises(TypeError, match="must define a dict named `config`"):
        load_config_file(tmp_path / "c.py")


def parse_train(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    return parser.parse_args(["train", *argv])


def test_flags_override_the_file_and_absent_flags_override_nothing(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('model = "lenet5"\nepochs = 7\nlr = 0.5\naugment = true\n')
    args = parse_train(
        ["--config", str(path), "--lr", "0.25", "--no-augment", "--batch-size", "32"]
    )
    settings = commands.explicit_settings(args)
    assert settings == {
        "model": "lenet5",
        "epochs": 7,
        "lr": 0.25,
        "augment": False,
        "batch_size": 32,
    }
    config = resolve(settings)
    assert (config.epochs, config.lr, config.augment, config.batch_size) == (7, 0.25, False, 32)
    assert config.nesterov == PRESETS["lenet5"]["nesterov"]


def test_presets_read_as_the_flags_that_set_them():
    assert commands.as_flags({"lr": 0.1, "augment": True, "nesterov": False}) == (
        "--lr 0.1 --augment --no-nesterov"
    )
    args = parse_train(["lenet5", *commands.as_flags(PRESETS["lenet5"]).split()])
    assert resolve(commands.explicit_settings(args)) == resolve({"model": "lenet5"})


def test_every_field_has_a_flag():
    args = parse_train(
        [
            "mlp",
            "--max-train-examples",
            "5",
            "--precision",
            "bf16",
            "--nesterov",
            "--optimizer",
            "adamw",
            "--registry",
            "r",
        ]
    )
    assert commands.explicit_settings(args) == {
        "model": "mlp",
        "max_train_examples": 5,
        "precision": "bf16",
        "nesterov": True,
        "optimizer": "adamw",
        "registry": "r",
    }


def test_resume_may_extend_epochs_but_not_change_the_run():
    saved = TrainConfig(model="mlp", epochs=2).to_dict()
    assert resumed(saved, {"epochs": 5, "log": "x.jsonl"}).epochs == 5
    assert resumed(saved, {}).to_dict() == saved
    assert resumed(saved, {"name": "mlp-mnist5k"}).run_name == "mlp-mnist5k"
    with pytest.raises(ValueError, match="cannot change name='mlp-mnist5k' -> 'other'"):
        resumed(saved, {"name": "other"})
    with pytest.raises(ValueError, match=r"cannot change lr=0.1 -> 0.5"):
        resumed(saved, {"lr": 0.5})
    assert {"epochs", "registry"} <= RESUMABLE_FIELDS and "batch_size" not in RESUMABLE_FIELDS


@pytest.mark.parametrize("name", ["", "  "])
def test_an_empty_name_is_refused(name):
    with pytest.raises(InvalidValueError, match="name must not be empty"):
        TrainConfig(model="mlp", name=name)


def test_model_args_come_from_flags_and_files_and_each_flag_overrides_its_key(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('model = "mlp"\n[model_args]\nhidden = [64, 32]\nactivation = "relu"\n')
    args = parse_train(
        ["--config", str(path), "--model-arg", "hidden=[128]", "--model-arg", "in_channels=1"]
    )
    config = resolve(commands.explicit_settings(args))
    assert config.model_args == {"hidden": [128], "activation": "relu", "in_channels": 1}
    assert config.to_dict()["model_args"] == config.model_args
    assert commands.model_arg("activation=gelu") == ("activation", "gelu")  # Not JSON: text.
    assert commands.model_arg(" width = 2.5") == ("width", 2.5)
    assert commands.as_flags({"model_args": {"hidden": [8, 4]}}) == "--model-arg hidden=[8,4]"


@pytest.mark.parametrize("text", ["hidden", "=3", ""])
def test_a_model_arg_without_a_key_is_a_one_line_error(capsys, text):
    with pytest.raises(SystemExit) as info:
        parse_train(["mlp", "--model-arg", text])
    assert info.value.code == 2
    assert f"argument --model-arg: expected KEY=VALUE, got {text!r}" in capsys.readouterr().err


def test_model_args_must_be_a_table_and_are_part_of_what_resume_keeps():
    with pytest.raises(TypeError, match="model_args must be a table of named values, got 3"):
        TrainConfig(model="mlp", model_args=3)
    saved = TrainConfig(model="mlp", model_args={"hidden": [16]}).to_dict()
    with pytest.raises(ValueError, match=r"cannot change model_args=\{'hidden': \[16\]\}"):
        resumed(saved, {"model_args": {"hidden": [32]}})
    old = {k: v for k, v in saved.items() if k != "model_args"}  # Saved before model_args.
    assert resumed(old, {"epochs": 3}).model_args == {}


def test_the_help_of_a_flag_a_preset_sets_shows_the_presets_values(capsys):
    with pytest.raises(SystemExit):
        parse_train(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    epochs = f"lenet5 {PRESETS['lenet5']['epochs']}"
    assert f"passes over the training split (default: the model's preset ({epochs}," in text
    assert "(default: 10)" not in text
    assert "seed of initialisation, shuffling, augmentation and dropout (default: 0)" in text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('config = {"model": "mlp",\n  "lr": 0.1\nx = (\n', r"line 2: SyntaxError: "),
        ("def f():\n    raise RuntimeError('boom')\n\nf()\n", r"line 2: RuntimeError: boom$"),
        ('config = {"model": "mlp", "lr": undefined}\n', r"line 1: NameError: name 'undefined'"),
        ("import sys\nsys.exit(0)\n", r"line 2: called sys\.exit\(0\)$"),
        ("import sys\n\nsys.exit()\nconfig = {}\n", r"line 3: called sys\.exit\(None\)$"),
        ("raise SystemExit('bye')\n", r"line 1: called sys\.exit\('bye'\)$"),
    ],
)
def test_a_python_config_that_fails_is_one_line_naming_its_file_and_line(tmp_path, text, message):
    path = tmp_path / "run.py"
    path.write_text(text)
    with pytest.raises(InvalidValueError) as error:  # Never SystemExit: zoo train goes on.
        load_config_file(path)
    assert str(error.value).startswith(f"config file {path}, ")
    assert "\n" not in str(error.value)
    assert re.search(message, str(error.value)), str(error.value)


def test_a_folder_named_like_a_config_file_is_not_a_file(tmp_path):
    (tmp_path / "x.json").mkdir()
    with pytest.raises(InvalidValueError, match=r"config file .*x\.json is not a file"):
        load_config_file(tmp_path / "x.json")


def test_the_help_says_a_python_config_runs_as_code(capsys):
    with pytest.raises(SystemExit):
        parse_train(["--help"])
    assert "a .py file is run as Python" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("field", ["mixup", "cutmix", "lr", "weight_decay", "warmup_epochs"])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_a_setting_that_is_not_a_finite_number_is_refused(field, value):
    with pytest.raises(InvalidValueError, match=f"{field} must be a finite number"):
        TrainConfig(model="mlp", **{field: value})


@pytest.mark.parametrize(
    ("model_args", "message"),
    [
        ({"num_classes": "ten"}, "lenet5: num_classes='ten' is not an integer"),
        ({"num_classes": "{bad"}, "lenet5: num_classes='{bad' is not an integer"),
        ({"dtype": "banana"}, "lenet5: dtype='banana' is not a floating-point dtype"),
        ({"param_dtype": "int8"}, "lenet5: param_dtype='int8' is not a floating-point dtype"),
        ({"depth": 3}, "lenet5: unknown argument(s) 'depth'"),
    ],
)
def test_model_args_are_checked_as_the_config_is_resolved(model_args, message):
    with pytest.raises(zoo.ZooError) as error:
        resolve({"model": "lenet5", "model_args": model_args})
    assert message in str(error.value)


def test_a_model_arg_given_on_resume_with_the_value_the_run_was_built_with_changes_nothing():
    saved = TrainConfig(model="lenet5", epochs=2).to_dict()
    built = {"num_classes": 10, "input_size": (32, 32)}  # What the saved run's module had.
    same = {"model_args": {"num_classes": 10, "input_size": [32, 32]}, "epochs": 4}
    assert resumed(saved, same, built).model_args == {}
    with pytest.raises(InvalidValueError, match="cannot change model_args"):
        resumed(saved, {"model_args": {"num_classes": 26}}, built)
    with pytest.raises(InvalidValueError, match="num_classes='ten' is not an integer"):
        resumed(saved, {"model_args": {"num_classes": "ten"}}, built)


def test_resume_with_the_saved_runs_own_model_arg_value_is_no_change(tmp_path):
    model = zoo.create_model("mlp", num_classes=10)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    zoo.hub.save(
        "run",
        model_name="mlp",
        model_config={"num_classes": 10, "input_size": (28, 28)},  # As training builds it.
        variables=variables,
        step=4,
        meta={"config": TrainConfig(model="mlp", epochs=2, name="run").to_dict()},
        registry=tmp_path,
    )
    settings = {"name": "run", "registry": str(tmp_path), "epochs": 3}
    config = configure(resume=True, model_args={"num_classes": 10}, **settings)
    assert config.model_args == {} and config.epochs == 3
    with pytest.raises(InvalidValueError, match=r"cannot change model_args=\{\} -> \{'num_"):
        configure(resume=True, model_args={"num_classes": 26}, **settings)


def test_the_registry_flag_names_the_user_registry_and_the_shipped_models():
    # It said the default was "the checkout's checkpoints/", the read-only shipped models.
    help_ = " ".join(flags()["registry"][1].help.split())
    assert "checkpoints/" not in help_
    assert "$ZOO_REGISTRY, else ~/.local/share/jax-zoo/registry" in help_
    assert "before the shipped models" in help_
