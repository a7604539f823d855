"""Loss and accuracy of model variables on a held-out split: for training and `zoo eval`.

A split on the devices is evaluated by one compiled call: a `lax.scan` over fixed-size batches
(the last one padded and masked), sharded over the mesh, whose per-batch sums stay on the device.
A streamed split (`zoo.training.streaming`) goes through the same batches, read from storage,
one compiled call each. Images of any size are cut to the model's input by the evaluation
transform (`zoo.data.transforms.centre_crop`) on either path. Accuracy is top-1, with top-5
beside it for more than 10 classes; `zoo eval` adds each class's accuracy for 10 classes or
fewer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

import zoo
from zoo import hub
from zoo.data import DataSource, open_dataset
from zoo.data.sampling import CentreCrop, EvalReader, Unchanged
from zoo.errors import InvalidValueError, NotFoundError
from zoo.preprocessing import Preprocessing
from zoo.training.pipeline import DeviceSplit, eval_batch, eval_order
from zoo.training.report import host_metrics
from zoo.training.sharding import make_mesh, replicate
from zoo.training.step import TOP5_MIN_CLASSES, Metrics, eval_step
from zoo.training.streaming import local_rows, make_stream_evaluator

EVAL_BATCH_SIZE = 256  # `zoo eval`'s batch, rounded to a multiple of the device count.


def make_evaluator(
    apply_fn: Callable[..., jax.Array],
    variables: dict[str, Any],
    split: DeviceSplit | EvalReader,
    preprocessing: Preprocessing,
    batch_size: int,
    mesh: Mesh,
    task: str = "classification",
    *,
    per_class: bool = False,
) -> Callable[[dict[str, Any]], Metrics]:
    """A compiled `variables -> {"loss_sum", "count"[, "correct", ...]}` (device sums) over
    `split` (`zoo.training.step.metric_sums`; `per_class` adds each class's sums): on the
    devices, or streamed (an `EvalReader`, whose batches are its own).

    `variables` (replicated on `mesh`) fixes the shapes it is compiled for; it is compiled here,
    so that the first epoch's timing measures evaluation, not XLA.
    """
    if isinstance(split, EvalReader):
        return make_stream_evaluator(
            apply_fn, variables, split, mesh, task, preprocessing, per_class=per_class
        )
    indices, weights = replicate(eval_order(len(split), batch_size), mesh)
    step = functools.partial(eval_step, apply_fn=apply_fn, task=task, per_class=per_class)

    @jax.jit
    def evaluate(
        variables: dict[str, Any], split: DeviceSplit, indices: jax.Array, weights: jax.Array
    ) -> Metrics:
        def sums(batch_order: tuple[jax.Array, jax.Array]) -> Metrics:
            return step(
                variables, eval_batch(split, *batch_order, mesh, preprocessing=preprocessing)
            )

        def body(totals: Metrics, batch_order: tuple[jax.Array, jax.Array]) -> tuple[Metrics, None]:
            return jax.tree.map(jnp.add, totals, sums(batch_order)), None

        # Zeros shaped as one batch's sums: the model's outputs decide which sums there are.
        shapes = jax.eval_shape(sums, (indices[0], weights[0]))
        zeros = jax.tree.map(lambda shape: jnp.zeros(shape.shape, shape.dtype), shapes)
        return jax.lax.scan(body, zeros, (indices, weights))[0]

    compiled = evaluate.lower(variables, split, indices, weights).compile()
    return lambda variables: compiled(variables, split, indices, weights)


def evaluate_split(
    apply_fn: Callable[..., jax.Array],
    variables: dict[str, Any],
    split: DeviceSplit | EvalReader,
    preprocessing: Preprocessing,
    batch_size: int,
    mesh: Mesh,
    task: str = "classification",
    *,
    per_class: bool = False,
) -> dict[str, Any]:
    """{"val_loss"[, "val_accuracy"[, "val_top5_accuracy"]]} of `variables` on `split`, fetched
    to the host; `per_class` adds "class_accuracy" (None for a class with no examples) and
    "class_examples", one per class."""
    variables = replicate(variables, mesh)
    evaluator = make_evaluator(
        apply_fn, variables, split, preprocessing, batch_size, mesh, task, per_class=per_class
    )
    totals = jax.device_get(evaluator(variables))
    metrics: dict[str, Any] = host_metrics(totals, "val")
    if per_class:
        counts, correct = totals["class_count"], totals["class_correct"]
        metrics["class_examples"] = [int(count) for count in counts]
        metrics["class_accuracy"] = [
            float(hits / count) if count else None
            for hits, count in zip(correct, counts, strict=True)
        ]
    return metrics


def evaluate_saved(
    name: str,
    *,
    dataset: str | None = None,
    step: int | None = None,
    registry: str | None = None,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Held-out loss and accuracy of registry model `name` on `dataset` (default: its own).

    The held-out split is streamed (`zoo.training.streaming`), images of any size cut to the
    model's input by the evaluation transform; the model's recorded preprocessing is applied,
    so the result matches what training logged for the same data. Returns {"dataset", "step",
    "examples", "val_loss"} and, for a classifier, "val_accuracy" (top-1), "class_names", and
    "val_top5_accuracy" for more than 10 classes or "class_accuracy" and "class_examples" (per
    class) for 10 or fewer. The data set must have the model's number of classes, and the same
    class names where both record names: otherwise its labels do not mean what the model's
    outputs do.
    """
    loaded = hub.load(name, step=step, registry=registry)
    if loaded.preprocessing is None:
        raise InvalidValueError(
            f"{name} step {loaded.step} was saved without meta['preprocessing']; "
            "it cannot be evaluated on raw data"
        )
    dataset = dataset or loaded.meta.get("dataset")
    if dataset is None:
        raise NotFoundError(
            f"{name} step {loaded.step} records no data set it was trained on (an imported "
            f"model, say): name one, e.g. `zoo eval {name} --dataset NAME` with a data set of "
            f"{'x'.join(map(str, loaded.preprocessing.source_shape))} images"
        )
    preprocessing = loaded.preprocessing
    source_shape = tuple(preprocessing.source_shape)
    source = open_dataset(
        dataset,
        data_dir=data_dir,
        image_shape=source_shape,
        num_classes=getattr(loaded.module, "num_classes", None),
    )
    if source.image_shape is None:  # Images of any size: the evaluation transform.
        crop_fraction = preprocessing.crop_fraction or CentreCrop.crop_fraction
        transform = CentreCrop(source_shape[:2], source_shape[-1], crop_fraction)
    elif source.image_shape == source_shape:
        transform = Unchanged(source_shape)
    else:
        raise InvalidValueError(
            f"{name} was trained on {source_shape} images; {dataset} has {source.image_shape}"
        )
    task = zoo.model_info(loaded.model_name).task
    class_names = _class_names(loaded, source) if task == "classification" else None
    mesh = make_mesh()
    batch_size = mesh.size * max(1, EVAL_BATCH_SIZE // mesh.size)
    reader = EvalReader(source.test, transform, batch_size, local_rows(mesh, batch_size))
    metrics = evaluate_split(
        loaded.module.apply,
        loaded.variables,
        reader,
        preprocessing,
        batch_size,
        mesh,
        task,
        per_class=class_names is not None and len(class_names) < TOP5_MIN_CLASSES,
    )
    named = {} if class_names is None else {"class_names": class_names}
    return {
        "dataset": dataset,
        "step": loaded.step,
        "examples": len(source.test),
        **named,
        **metrics,
    }


def _class_names(loaded: hub.LoadedModel, data: DataSource) -> tuple[str, ...]:
    """The names of the classes of `loaded` evaluated on `data`: the model's recorded ones, else
    the data set's, else the ids. Raises `ValueError` where the two cannot be the same classes."""
    where = f"{loaded.name} step {loaded.step}"
    if loaded.class_names is None or len(loaded.class_names) != data.num_classes:
        have = (
            "no class outputs"
            if loaded.class_names is None
            else f"{len(loaded.class_names)} classes"
        )
        raise InvalidValueError(f"{where} has {have}; {data.name} has {data.num_classes} classes")
    recorded = loaded.meta.get(hub.CLASS_NAMES)
    if None not in (recorded, data.class_names) and tuple(recorded) != data.class_names:
        raise InvalidValueError(
            f"{where} was trained on classes {_some(recorded)}, but {data.name}'s are "
            f"{_some(data.class_names)}: its labels do not mean the model's classes"
        )
    return tuple(recorded) if recorded is not None else data.class_names or loaded.class_names


def _some(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"
