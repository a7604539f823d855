"""Class names travel with the model: data set, checkpoint, `LoadedModel`, `zoo predict`, `eval`.

Models here are freshly initialised (no training): what is tested is where the names go and how
they are printed, against the probabilities the model itself gives.
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

import zoo
from zoo import hub
from zoo.cli import main
from zoo.data import Dataset, Split, load_dataset, prepared
from zoo.preprocessing import Preprocessing

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints"
DIGITS = tuple(map(str, range(10)))
FASHION = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
GREY_28 = Preprocessing(
    source_shape=(28, 28, 1), input_shape=(28, 28, 1), mean=(0.13,), std=(0.31,)
)


class Shapes(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A three-class TFDS set whose `ClassLabel` has names."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=["circle", "square", "triangle"]),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        return {"train": self._generate_examples(6), "test": self._generate_examples(3)}

    def _generate_examples(self, count: int):
        for i in range(count):
            yield i, {"image": np.full((8, 8, 1), i, np.uint8), "label": i % 3}


def test_tfds_sets_name_their_classes_from_their_class_label(mnist5k_dir, tmp_path):
    assert load_dataset("mnist5k", data_dir=mnist5k_dir).class_names == DIGITS  # no names: ids
    builder = Shapes(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    # Read back from the prepared folder alone: the names come from its metadata.
    shapes = prepared.tfds_source(tfds.builder_from_directory(builder.data_dir))
    assert shapes.class_names == ("circle", "square", "triangle") and shapes.num_classes == 3
    synthetic = load_dataset("synthetic", image_shape=(4, 4, 1), num_classes=3)
    assert synthetic.class_names is None


def test_a_data_set_has_one_name_per_class():
    split = Split(np.zeros((2, 4, 4, 1), np.uint8), np.array([0, 1], np.int32))
    with pytest.raises(ValueError, match="3 class names for 2 classes"):
        Dataset("x", split, split, 2, ("a", "b", "c"))
    with pytest.raises(TypeError, match="class_names must be a sequence of strings"):
        Dataset("x", split, split, 2, ("a", 1))
    assert Dataset("x", split, split, 2, ["a", "b"]).class_names == ("a", "b")


def init_variables(model_name: str, **config) -> dict:
    module = zoo.create_model(model_name, **config)
    shape = (1, *zoo.model_info(model_name).input_shape)
    return jax.device_get(module.init(jax.random.key(0), jnp.zeros(shape), train=False))


def save_mlp(name: str, registry: Path, class_names=None, classes: int = 10, **meta) -> None:
    named = {} if class_names is None else {"class_names": class_names}
    hub.save(
        name,
        model_name="mlp",
        model_config={"num_classes": classes},
        variables=init_variables("mlp", num_classes=classes),
        step=1,
        meta={"preprocessing": GREY_28.to_dict(), **named, **meta},
        registry=registry,
    )


def test_checkpoints_keep_their_names_and_older_ones_name_classes_by_id(tmp_path):
    save_mlp("fashion", tmp_path, FASHION)
    assert hub.load("fashion", registry=tmp_path).class_names == FASHION
    # A classifier saved without names (as every checkpoint was before names were recorded)
    # names its classes by their ids.
    save_mlp("unnamed", tmp_path)
    assert "class_names" not in hub.read_metadata("unnamed", registry=tmp_path)
    assert hub.load("unnamed", registry=tmp_path).class_names == DIGITS
    # The shipped autoencoder predates names and keeps loading; the shipped LeNet-5 records them.
    assert "class_names" not in hub.read_metadata("conv_autoencoder-mnist5k", registry=SHIPPED)
    assert zoo.load("conv_autoencoder-mnist5k", registry=SHIPPED).class_names is None
    assert hub.read_metadata("lenet5-mnist5k", registry=SHIPPED)["class_names"] == list(DIGITS)


@pytest.mark.parametrize(
    ("names", "error", "message"),
    [
        (FASHION[:9], ValueError, "9 class names for a model of 10 classes"),
        ("T-shirt", TypeError, "class names must be a list of strings"),
        ([1, 2], TypeError, "class names must be a list of strings"),
    ],
)
def test_names_that_do_not_fit_the_model_are_refused_before_anything_is_saved(
    tmp_path, names, error, message
):
    with pytest.raises(error, match=message):
        save_mlp("bad", tmp_path, names)
    assert not (tmp_path / "bad").exists()


def test_classify_ranks_the_names_by_probability(tmp_path):
    save_mlp("fashion", tmp_path, FASHION)
    loaded = hub.load("fashion", registry=tmp_path)
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), np.uint8)
    probabilities = loaded.probabilities(images)
    np.testing.assert_allclose(probabilities.sum(-1), 1, rtol=1e-5)
    for row, predictions in zip(probabilities, loaded.classify(images, top=3), strict=True):
        ids = np.argsort(-row)[:3]
        assert [p.class_id for p in predictions] == list(ids)
        assert [p.name for p in predictions] == [FASHION[i] for i in ids]
        np.testing.assert_allclose([p.probability for p in predictions], row[ids])
    with pytest.raises(ValueError, match="top must be a positive number of classes, got 0"):
        loaded.classify(images, top=0)


def expected_line(label: str, probabilities: np.ndarray, names, top: int | None) -> str:
    """What `zoo predict` should print for one image, from the model's own probabilities."""
    order = np.argsort(-probabilities)
    shown = order[:top] if top else [order[0], *(i for i in order[1:] if probabilities[i] >= 0.1)]
    return f"{label}: " + ", ".join(f"{names[i]} ({probabilities[i]:.1%})" for i in shown)


def test_zoo_predict_prints_names_with_probabilities(tmp_path, capsys):
    save_mlp("fashion", tmp_path, FASHION)
    save_mlp("twelve", tmp_path, [f"class {i}" for i in range(12)], classes=12)
    images = np.random.default_rng(1).integers(0, 256, (3, 28, 28), np.uint8)
    images[:, :, :4] = 0  # A dark border: no inversion.
    np.save(tmp_path / "three.npy", images)
    PIL.Image.fromarray(images[0]).save(tmp_path / "one.png")
    files = [str(tmp_path / "three.npy"), str(tmp_path / "one.png")]
    labels = [f"{tmp_path / 'three.npy'}[{i}]" for i in range(3)] + [str(tmp_path / "one.png")]
    rows = [*images, images[0]]

    for name, top, names in [
        ("fashion", None, FASHION),  # 10 classes: the first, and any other of 10% or more
        ("fashion", 2, FASHION),
        ("twelve", None, [f"class {i}" for i in range(12)]),  # more than 10: the top 5
    ]:
        flags = [] if top is None else ["--top", str(top)]
        assert main(["predict", name, *files, "--registry", str(tmp_path), *flags]) == 0
        loaded = hub.load(name, registry=tmp_path)
        probabilities = loaded.probabilities(np.stack(rows))
        shown = top or (5 if name == "twelve" else None)
        expected = [
            expected_line(label, p, names, shown)
            for label, p in zip(labels, probabilities, strict=True)
        ]
        assert capsys.readouterr().out.splitlines() == expected
    assert main(["predict", "twelve", files[1], "--top", "12", "--registry", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("%") == 12


def test_a_tiny_probability_reads_as_below_a_tenth_of_a_percent(tmp_path, capsys):
    variables = init_variables("mlp", num_classes=12)
    bias = np.zeros(12, np.float32)
    bias[3] = 30.0  # Class 3 takes everything; the others get ~1e-13 each.
    variables["params"]["classifier"]["bias"] = bias
    hub.save(
        "sure",
        model_name="mlp",
        model_config={"num_classes": 12},
        variables=variables,
        step=1,
        meta={"preprocessing": GREY_28.to_dict()},
        registry=tmp_path,
    )
    np.save(tmp_path / "x.npy", np.zeros((28, 28), np.uint8))
    assert main(["predict", "sure", str(tmp_path / "x.npy"), "--registry", str(tmp_path)]) == 0
    line = capsys.readouterr().out.strip()
    assert re.fullmatch(r".*x\.npy\[0\]: 3 \(100\.0%\), (\d+ \(<0\.1%\), ){3}\d+ \(<0\.1%\)", line)


def test_zoo_eval_refuses_a_data_set_whose_classes_are_not_the_models(
    tmp_path, capsys, mnist5k_env
):
    save_mlp("fashion", tmp_path, FASHION, dataset="mnist5k")
    save_mlp("twelve", tmp_path, classes=12, dataset="mnist5k")
    for name, message in [
        (
            "fashion",
            "fashion step 1 was trained on classes T-shirt/top, Trouser, Pullover, Dress, "
            "Coat, ... (10 in all), but mnist5k's are 0, 1, 2, 3, 4, ... (10 in all): its "
            "labels do not mean the model's classes",
        ),
        ("twelve", "twelve step 1 has 12 classes; mnist5k has 10 classes"),
    ]:
        assert main(["eval", name, "--registry", str(tmp_path)]) == 2
        assert capsys.readouterr().err == f"zoo eval: error: {message}\n"
