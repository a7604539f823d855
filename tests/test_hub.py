"""The checkpoint registry: round trips, listing, retention, architecture checks, lookups, CLI."""

from __future__ import annotations

import json
import pickle
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import PIL.Image
import pytest

import zoo
from zoo import hub
from zoo.cli import main
from zoo.hub import records
from zoo.hub.disk import steps_to_retire
from zoo.hub.manifest import write_manifest
from zoo.hub.store import expected_variables
from zoo.preprocessing import Preprocessing

MNIST_PREP = Preprocessing(
    source_shape=(28, 28, 1), input_shape=(32, 32, 1), mean=(0.1307,), std=(0.3081,)
)


def random_variables(model_name: str, seed: int = 0, **config):
    """Variables of the model's exact structure, filled with random values (no init compile)."""
    _, abstract = expected_variables(model_name, zoo.model_info(model_name).config(**config))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), abstract)


def assert_trees_equal(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert a.dtype == e.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def save_lenet(registry, name="lenet5-mnist", step=100, seed=0, **kwargs):
    meta = {
        "dataset": "mnist",
        "preprocessing": MNIST_PREP.to_dict(),
        "metrics": {"val_accuracy": 0.5 + step / 1e4},
    }
    return hub.save(
        name,
        model_name="lenet5",
        model_config={},
        variables=random_variables("lenet5", seed),
        step=step,
        meta=kwargs.pop("meta", meta),
        registry=registry,
        **kwargs,
    )


# --- round trips ------------------------------------------------------------------------------


def test_round_trip_with_batch_stats_is_bit_exact(tmp_path):
    variables = random_variables("resnet20", seed=1)
    assert set(variables) == {"params", "batch_stats"}
    meta = {
        "dataset": "cifar10",
        "metrics": {"val_accuracy": np.float32(0.875)},
        "train": {"lr": 0.1, "epochs": 3},
    }
    record = hub.save(
        "r20",
        model_name="resnet20",
        model_config={},
        variables=variables,
        step=5,
        meta=meta,
        registry=tmp_path,
    )

    loaded = hub.load("r20", registry=tmp_path)

    assert_trees_equal(loaded.variables, variables)
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(loaded.variables))
    assert loaded.module == zoo.create_model("resnet20")
    assert (loaded.name, loaded.model_name, loaded.step) == ("r20", "resnet20", 5)
    assert loaded.meta["metrics"] == {"val_accuracy": 0.875}
    assert loaded.meta["train"] == {"lr": 0.1, "epochs": 3}
    assert loaded.meta["params"] == record.params == 272_474 - 2_752  # BatchNorm stats excluded
    assert set(loaded.meta["versions"]) == {"jax", "flax", "optax", "orbax", "python"}
    assert loaded.meta["versions"]["jax"] == jax.__version__
    assert loaded.preprocessing is None
    assert record.size_bytes > sum(leaf.nbytes for leaf in jax.tree.leaves(variables)) // 2


def test_loading_never_unpickles(tmp_path, monkeypatch):
    save_lenet(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint was unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    assert hub.load("lenet5-mnist", registry=tmp_path).step == 100


def test_params_count_only_the_params_collection(tmp_path):
    record = save_lenet(tmp_path)
    assert record.params == 61_706
    assert record.dataset == "mnist"


@pytest.mark.parametrize(
    "config",
    [
        {"widths": (8, 16, 32)},
        {"dtype": jnp.bfloat16},
        {"num_classes": 7, "stage_sizes": [1, 1, 1]},
    ],
)
def test_recorded_config_rebuilds_an_equal_module(tmp_path, config):
    hub.save(
        "r",
        model_name="resnet20",
        model_config=config,
        step=0,
        registry=tmp_path,
        variables=random_variables("resnet20", **config),
    )
    assert hub.load("r", registry=tmp_path).module == zoo.create_model("resnet20", **config)


def test_config_that_json_cannot_hold_is_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match=r"resnet20 config widths\[1\].*set"):
        records.encode_config(
            "resnet20", {**zoo.model_info("resnet20").config(), "widths": (8, {16}, 32)}
        )


def test_loaded_model_predicts_like_the_module(tmp_path):
    save_lenet(tmp_path)
    loaded = hub.load("lenet5-mnist", registry=tmp_path)
    raw = np.random.default_rng(0).integers(0, 256, (6, 28, 28), np.uint8)

    expected = loaded.module.apply(loaded.variables, MNIST_PREP(raw), train=False)

    np.testing.assert_allclose(loaded.logits(raw), expected, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(loaded.predict(raw), np.argmax(expected, axis=-1))
    np.testing.assert_allclose(loaded.apply(MNIST_PREP(raw)), expected, rtol=1e-4, atol=1e-3)
    assert loaded.predict(raw).shape == (6,)


def test_train_state_round_trip(tmp_path):
    variables = random_variables("lenet5")
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    opt_state = tx.init(variables["params"])
    opt_state = jax.tree.map(lambda x: x + 1, opt_state)  # Not the fresh state: values must move.
    train_state = {"step": jnp.int32(300), "opt_state": opt_state, "key": jax.random.key(3)}
    hub.save(
        "l",
        model_name="lenet5",
        model_config={},
        variables=variables,
        step=300,
        train_state=train_state,
        registry=tmp_path,
    )

    fresh = {
        "step": jnp.int32(0),
        "opt_state": tx.init(variables["params"]),
        "key": jax.random.key(0),
    }
    restored = hub.load("l", registry=tmp_path, train_state=jax.eval_shape(lambda: fresh))
    restored = restored.train_state

    assert_trees_equal(restored["opt_state"], opt_state)
    assert int(restored["step"]) == 300
    np.testing.assert_array_equal(
        jax.random.key_data(restored["key"]), jax.random.key_data(train_state["key"])
    )
    with pytest.raises(hub.ArchitectureMismatchError, match="step: expected float32"):
        hub.load("l", registry=tmp_path, train_state={**fresh, "step": jnp.float32(0)})


def test_restoring_the_train_state_of_a_step_saved_without_one(tmp_path):
    save_lenet(tmp_path)
    with pytest.raises(hub.CheckpointNotFoundError, match="without a train_state"):
        hub.load("lenet5-mnist", registry=tmp_path, train_state={})


# --- listing and retention --------------------------------------------------------------------


def test_list_checkpoints(tmp_path):
    save_lenet(tmp_path, name="b-net", step=1)
    save_lenet(tmp_path, name="a-net", step=20)
    save_lenet(tmp_path, name="a-net", step=3)

    records = hub.list_checkpoints(tmp_path)

    assert [(r.name, r.step) for r in records] == [("a-net", 3), ("a-net", 20), ("b-net", 1)]
    first = records[0]
    assert (first.model_name, first.dataset, first.params) == ("lenet5", "mnist", 61_706)
    assert first.metrics == {"val_accuracy": 0.5003}
    assert first.path == tmp_path / "a-net" / "step_3"
    assert first.size_bytes == sum(
        p.stat().st_size for p in first.path.rglob("*") if p.is_file() and p.name != "manifest.json"
    )
    assert first.created.endswith("+00:00")
    assert hub.latest_step("a-net", registry=tmp_path) == 20
    assert hub.latest_step("nothing-here", registry=tmp_path) is None


def test_max_to_keep_keeps_the_latest_and_the_best(tmp_path):
    accuracy = {1: 0.5, 2: 0.9, 3: 0.6, 4: 0.7, 5: 0.8, 6: 0.85}
    for step, value in accuracy.items():
        save_lenet(
            tmp_path,
            step=step,
            max_to_keep=3,
            best=("val_accuracy", "max"),
            meta={"metrics": {"val_accuracy": value}},
        )
    assert [r.step for r in hub.list_checkpoints(tmp_path)] == [2, 4, 5, 6]
    assert not [
        p
        for p in (tmp_path / "lenet5-mnist").iterdir()
        if p.name.startswith(".") and p.name != ".lock"
    ]


def test_a_nan_metric_never_wins_best(tmp_path):
    for step, value in {1: 0.9, 2: float("nan"), 3: 0.5, 4: 0.6}.items():
        save_lenet(
            tmp_path,
            step=step,
            max_to_keep=1,
            best=("val_accuracy", "max"),
            meta={"metrics": {"val_accuracy": value}},
        )
    assert [r.step for r in hub.list_checkpoints(tmp_path)] == [1, 4]


def test_max_to_keep_none_keeps_everything(tmp_path):
    for step in range(5):
        save_lenet(tmp_path, step=step, max_to_keep=None)
    assert [r.step for r in hub.list_checkpoints(tmp_path)] == [0, 1, 2, 3, 4]


def test_a_runs_retention_prunes_only_its_own_steps(tmp_path):
    for step, run in enumerate(["earlier", "other", "this", "this"]):
        save_lenet(tmp_path, step=step, max_to_keep=1, run_id=run)
    assert [r.step for r in hub.list_checkpoints(tmp_path)] == [0, 1, 3]
    assert hub.read_metadata("lenet5-mnist", step=3, registry=tmp_path)["run_id"] == "this"
    save_lenet(tmp_path, step=4, max_to_keep=1)  # No run id: prunes only steps without one.
    assert [r.step for r in hub.list_checkpoints(tmp_path)] == [0, 1, 3, 4]


def test_retention_policy():
    steps = [10, 20, 30, 40]
    assert steps_to_retire(steps, max_to_keep=2, best=None, metric_values={}, just_saved=40) == [
        10,
        20,
    ]
    loss = {10: 0.1, 20: 0.3, 30: 0.1, 40: 0.5}
    assert steps_to_retire(
        steps, max_to_keep=1, best=("loss", "min"), metric_values=loss, just_saved=40
    ) == [10, 20]  # Tie at 0.1: the later step is kept.
    assert steps_to_retire(steps, max_to_keep=1, best=None, metric_values={}, just_saved=20) == [
        10,
        30,
    ]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_to_keep": 0}, "max_to_keep must be a positive int"),
        ({"best": ("val_accuracy", "up")}, "best must be"),
        (
            {"best": ("val_loss", "min"), "meta": {"metrics": {"val_loss": "low"}}},
            r"needs a number at meta\['metrics'\]\['val_loss'\], got 'low'",
        ),
        ({"meta": {"step": 3}}, "meta key.*step.*written by the store"),
        ({"step": -1}, "step must be a non-negative int"),
        ({"name": "../escape"}, "checkpoint name must match"),
    ],
)
def test_bad_save_arguments_are_refused_before_writing(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        save_lenet(tmp_path, **kwargs)
    assert not (tmp_path / "lenet5-mnist").exists()


def test_meta_must_be_json(tmp_path):
    with pytest.raises(TypeError, match=r"meta must be JSON-able.*object"):
        save_lenet(tmp_path, meta={"dataset": object()})


def test_a_step_is_never_overwritten(tmp_path):
    save_lenet(tmp_path, step=7, seed=0)
    with pytest.raises(FileExistsError, match="step 7 already exists"):
        save_lenet(tmp_path, step=7, seed=1)
    expected = random_variables("lenet5", seed=0)
    assert_trees_equal(hub.load("lenet5-mnist", registry=tmp_path).variables, expected)


# --- architecture checks ----------------------------------------------------------------------


def test_variables_of_another_architecture_are_refused_at_save(tmp_path):
    expected = r"params/output/kernel: expected float32\[84, 5\], got float32\[84, 10\]"
    with pytest.raises(hub.ArchitectureMismatchError, match=expected):
        hub.save(
            "x",
            model_name="lenet5",
            model_config={"num_classes": 5},
            step=0,
            variables=random_variables("lenet5"),
            registry=tmp_path,
        )


def test_variables_of_another_dtype_are_refused_at_save(tmp_path):
    half = jax.tree.map(lambda x: x.astype(np.float16), random_variables("lenet5"))
    with pytest.raises(hub.ArchitectureMismatchError, match=r"(?s)10 array\(s\).*float16"):
        hub.save(
            "x", model_name="lenet5", model_config={}, step=0, variables=half, registry=tmp_path
        )


def test_resnet18_weights_do_not_load_as_resnet34(tmp_path):
    with pytest.raises(hub.ArchitectureMismatchError, match="missing") as error:
        hub.save(
            "x",
            model_name="resnet34",
            model_config={},
            step=0,
            registry=tmp_path,
            variables=random_variables("resnet18"),
        )
    assert "... and" in str(error.value)  # Many differences: the first few, then a count.


def edit_step(step_dir, edit):
    """Changes a committed step and re-signs it: a checkpoint that verifies but does not fit."""
    (step_dir / "manifest.json").unlink()
    edit(step_dir)
    write_manifest(step_dir)


def test_load_refuses_a_config_that_no_longer_fits(tmp_path):
    record = save_lenet(tmp_path)

    def five_classes(step_dir):
        meta = json.loads((step_dir / "meta.json").read_text())
        meta["model_config"]["num_classes"] = 5
        (step_dir / "meta.json").write_text(json.dumps(meta))

    edit_step(record.path, five_classes)
    with pytest.raises(hub.ArchitectureMismatchError) as error:
        hub.load("lenet5-mnist", registry=tmp_path)
    assert str(error.value).splitlines()[1:] == [
        "  params/output/bias: expected float32[5], got float32[10]",
        "  params/output/kernel: expected float32[84, 5], got float32[84, 10]",
    ]


def test_load_refuses_saved_arrays_of_another_dtype(tmp_path):
    # Orbax would cast float16 to float32 without a word.
    record = save_lenet(tmp_path)
    half = jax.tree.map(lambda x: x.astype(np.float16), random_variables("lenet5"))

    def float16_variables(step_dir):
        import shutil

        from zoo.hub import store

        shutil.rmtree(step_dir / "variables")
        store.save_tree(step_dir / "variables", half)

    edit_step(record.path, float16_variables)
    with pytest.raises(
        hub.ArchitectureMismatchError,
        match=r"params/c1/bias: expected float32\[6\], got float16\[6\]",
    ):
        hub.load("lenet5-mnist", registry=tmp_path)


# --- names and registry roots -----------------------------------------------------------------


def test_unknown_name_lists_close_matches(tmp_path):
    save_lenet(tmp_path, name="lenet5-mnist")
    save_lenet(tmp_path, name="resnet20-cifar")
    with pytest.raises(hub.CheckpointNotFoundError, match="did you mean: lenet5-mnist") as error:
        hub.load("lenet5-mnst", registry=tmp_path)
    assert isinstance(error.value, KeyError)
    # The shipped models are looked up after the registry given, and listed too.
    with pytest.raises(
        KeyError, match=r"saved names: .*lenet5-mnist, lenet5-mnist5k, resnet20-cifar"
    ):
        hub.load("zzz", registry=tmp_path)


def test_unknown_step_lists_saved_steps(tmp_path):
    save_lenet(tmp_path, step=1)
    save_lenet(tmp_path, step=2)
    with pytest.raises(hub.CheckpointNotFoundError, match="no step 3; saved steps: 1, 2"):
        hub.load("lenet5-mnist", step=3, registry=tmp_path)


def test_missing_registry_root_says_how_to_set_it(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"{missing} does not exist.*ZOO_REGISTRY"):
        hub.list_checkpoints(missing)
    # A name is looked up in the shipped models too, so a missing registry is not an error.
    with pytest.raises(KeyError, match=f"'x' in {missing} \\(which does not exist yet\\) or "):
        hub.load("x", registry=missing)


def test_registry_path_that_is_a_file(tmp_path):
    file = tmp_path / "file"
    file.write_text("")
    with pytest.raises(NotADirectoryError, match=f"{file} is a file"):
        save_lenet(file)


def test_registry_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_REGISTRY", str(tmp_path / "env"))
    assert hub.registry_root(tmp_path / "arg") == tmp_path / "arg"
    assert hub.registry_root() == tmp_path / "env"
    monkeypatch.delenv("ZOO_REGISTRY")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert hub.registry_root() == tmp_path / "data" / "jax-zoo" / "registry"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub.registry_root() == tmp_path / "home" / ".local" / "share" / "jax-zoo" / "registry"


# --- command line -----------------------------------------------------------------------------


def test_cli_checkpoints_table(tmp_path, capsys):
    save_lenet(tmp_path, name="lenet5-mnist-long-name", step=1234)
    assert main(["checkpoints", "--registry", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "lenet5-mnist-long-name" in line)
    for cell in ("lenet5", "1234", "mnist", "val_accuracy=0.6234", "61,706", "kB"):
        assert cell in row


def test_cli_checkpoints_errors_are_one_line(tmp_path, capsys):
    assert main(["checkpoints", "--registry", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
    (tmp_path / "empty").mkdir()
    assert main(["checkpoints", "--registry", str(tmp_path / "empty")]) == 0
    assert "no checkpoints in" in capsys.readouterr().out


def test_cli_predict_npy_and_png(tmp_path, capsys):
    save_lenet(tmp_path / "reg")
    raw = np.random.default_rng(1).integers(0, 256, (3, 28, 28), np.uint8)
    np.save(tmp_path / "batch.npy", raw)
    np.save(tmp_path / "single.npy", raw[2])
    PIL.Image.fromarray(raw[1]).save(tmp_path / "one.png")
    expected = hub.load("lenet5-mnist", registry=tmp_path / "reg").predict(raw)

    code = main(
        [
            "predict",
            "lenet5-mnist",
            *(str(tmp_path / f) for f in ("batch.npy", "single.npy", "one.png")),
            "--registry",
            str(tmp_path / "reg"),
            "--step",
            "100",
        ]
    )

    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and len(lines) == 5
    # `FILE: 7 (41.2%)[, 3 (12.0%)...]`: the most probable class first, named by its id.
    first = [re.match(r".*?: (\d) \((\d+\.\d)%\)", line) for line in lines]
    assert [int(match[1]) for match in first] == [*expected, expected[2], expected[1]]
    assert lines[0].startswith(f"{tmp_path / 'batch.npy'}[0]: ")
    assert all(0 < float(match[2]) <= 100 for match in first)


def test_cli_predict_refuses_non_uint8(tmp_path, capsys):
    save_lenet(tmp_path / "reg")
    np.save(tmp_path / "float.npy", np.zeros((2, 28, 28), np.float32))
    assert (
        main(
            [
                "predict",
                "lenet5-mnist",
                str(tmp_path / "float.npy"),
                "--registry",
                str(tmp_path / "reg"),
            ]
        )
        == 2
    )
    assert "expected raw uint8 images (0..255), got float32" in capsys.readouterr().err


def test_a_relative_registry_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert hub.registry_root("reg") == tmp_path / "reg"


def test_load_with_train_state_verifies_once_and_restores_both(tmp_path, monkeypatch):
    from zoo.hub import manifest

    variables = random_variables("lenet5", seed=4)
    state = {"step": jnp.int32(9), "momentum": random_variables("lenet5", seed=5)["params"]}
    hub.save(
        "l",
        model_name="lenet5",
        model_config={},
        variables=variables,
        step=9,
        train_state=state,
        registry=tmp_path,
    )
    verified = []
    real_verify = manifest.verify
    monkeypatch.setattr(
        manifest, "verify", lambda folder: verified.append(folder) or real_verify(folder)
    )

    loaded = hub.load("l", registry=tmp_path, train_state=jax.eval_shape(lambda: state))

    assert verified == [tmp_path / "l" / "step_9"]
    assert_trees_equal(loaded.variables, variables)
    assert_trees_equal(loaded.train_state, state)
    assert hub.load("l", registry=tmp_path).train_state is None
    with pytest.raises(hub.ArchitectureMismatchError, match="step: expected float32"):
        hub.load("l", registry=tmp_path, train_state={**state, "step": jnp.float32(0)})
