"""The streaming path: batches read from storage on Grain, for sets the devices should not hold.

Training reads one Grain pipeline for the whole run, so worker processes start once:
`grain.MapDataset.range` over this process's stream positions (epoch after epoch, from the step
the run starts at), `.map(TrainReader)` (which example, read, decoded, transformed:
`zoo.data.sampling`), `.batch(local batch)`; read by `data_workers` worker processes
(`mp_prefetch`, Grain's processes) or, with 0, by threads of this process. A thread puts each
batch on the devices (`jax.make_array_from_process_local_data`: the rows this process's devices
hold) `DEVICE_PREFETCH` steps ahead, so reading, decoding and the transfer overlap the step.

The order and every random choice are functions of (seed, epoch, position) (`zoo.data.sampling`),
so the stream's state is the step it starts at: a resumed run reads exactly what the interrupted
one would have read next, whatever the number of processes or workers.

The held-out split is read in order by threads of this process at every evaluation, in padded
batches as the device path's (`EvalReader`); there is no training step to overlap with then.

Failures: a bad image raises its one-line error (naming the file) from the step that needed it;
a worker process that dies raises `DataWorkerDied` (Grain checks its workers while it waits, so
nothing hangs); either way the loop stops and the last checkpoint stays as it was.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from zoo.data.sampling import BatchPlan, EvalReader, TrainReader, die_with_parent
from zoo.training.pipeline import RawBatch
from zoo.training.sharding import batch_sharding, replicate, replicated
from zoo.training.step import Metrics, eval_step

DEVICE_PREFETCH = 2  # Batches on the devices ahead of the step.
MAX_DEFAULT_WORKERS = 16


class DataWorkerDied(RuntimeError):
    """A data-loading worker process ended without being asked to (killed, out of memory)."""


def default_workers(cores: int | None = None) -> int:
    """`--data-workers` when not given: one worker process per core beyond the first two (the
    training process's), at most `MAX_DEFAULT_WORKERS`; none on two cores or fewer, where the
    training process's own threads read faster than workers competing with the step for the
    same cores (bench/README.md, "Data loading")."""
    cores = cores or len(os.sched_getaffinity(0))
    return 0 if cores <= 2 else min(cores - 2, MAX_DEFAULT_WORKERS)


def local_rows(mesh: Mesh, batch_size: int) -> tuple[int, ...]:
    """The rows of a global batch of `batch_size` that this process's devices hold."""
    indices = batch_sharding(mesh).addressable_devices_indices_map((batch_size,))
    rows = {row for index in indices.values() for row in range(*index[0].indices(batch_size))}
    return tuple(sorted(rows))


def abstract_batch(
    spec: dict[str, tuple[tuple[int, ...], np.dtype]], batch_size: int, mesh: Mesh
) -> dict[str, jax.ShapeDtypeStruct]:
    """A global batch of `batch_size` examples of `spec` ({key: (shape, dtype)}), abstract."""
    sharding = batch_sharding(mesh)
    return {
        key: jax.ShapeDtypeStruct((batch_size, *shape), dtype, sharding=sharding)
        for key, (shape, dtype) in spec.items()
    }


class StreamFeed:
    """The training split streamed: each step's input is its batch, on the devices already."""

    def __init__(self, plan: BatchPlan, reader: TrainReader, mesh: Mesh, workers: int) -> None:
        self.plan, self.reader, self.mesh, self.workers = plan, reader, mesh, workers
        self._stream: DeviceStream | None = None
        self._next_step = 0

    @property
    def steps_per_epoch(self) -> int:
        return self.plan.steps_per_epoch

    def compile_inputs(self) -> dict[str, jax.ShapeDtypeStruct]:
        """Abstract arrays of a batch: what the step is compiled for."""
        return abstract_batch(self.reader.example_spec(), self.plan.batch_size, self.mesh)

    def epoch(self, epoch: int, first_step: int) -> Iterator[RawBatch]:
        """The batches of steps `first_step`.. of `epoch`, from the run's one stream."""
        step = epoch * self.steps_per_epoch + first_step
        if self._stream is None or step != self._next_step:  # The first epoch, or a jump.
            self.close()
            batches = train_batches(self.reader, self.plan.first_position(step), self.workers)
            self._stream = DeviceStream(batches, batch_sharding(self.mesh), self.plan.batch_size)
        for _ in range(first_step, self.steps_per_epoch):
            batch = next(self._stream)
            self._next_step = step = step + 1
            yield batch

    @staticmethod
    def raw_batch(inputs: RawBatch, step: jax.Array) -> RawBatch:
        del step  # The batch came in as the input.
        return inputs

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


def train_batches(reader: TrainReader, first: int, workers: int) -> Iterator[dict[str, Any]]:
    """This process's training batches (numpy) from stream position `first` on, read by
    `workers` processes (0: threads of this one)."""
    import grain  # Here, not at the top: a slow import that `zoo --help` need not wait for.
    from absl import flags

    dataset = (
        grain.MapDataset.range(first, first + 2**62)  # Endless: the run stops reading.
        .map(reader)
        .batch(reader.plan.local_batch, drop_remainder=True)
        .to_iter_dataset(
            grain.ReadOptions(num_threads=1 if workers else _threads(), prefetch_buffer_size=2)
        )
    )
    if workers:
        if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags the parent must have.
            flags.FLAGS.mark_as_parsed()
        dataset = dataset.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2),
            worker_init_fn=die_with_parent,
        )
    return iter(dataset)


def _threads() -> int:
    return max(1, len(os.sched_getaffinity(0)))


class DeviceStream:
    """Host batches (this process's rows) as global device arrays, `DEVICE_PREFETCH` ahead.

    A daemon thread reads and transfers; an error it meets is raised by the `next` that would
    have returned that batch. `close` stops the thread and closes the batches' source (Grain's
    worker processes).
    """

    def __init__(
        self, batches: Iterator[dict[str, Any]], sharding: NamedSharding, batch_size: int
    ) -> None:
        self._batches, self._sharding, self._batch_size = batches, sharding, batch_size
        self._queue: queue.Queue = queue.Queue(DEVICE_PREFETCH)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zoo-device-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for batch in self._batches:
                arrays = {key: self._global(value) for key, value in batch.items()}
                if not self._put(("batch", arrays)):
                    return
        except BaseException as error:  # Handed to the consumer, which raises it.
            self._put(("error", error))
        else:
            self._put(("error", StopIteration()))

    def _put(self, item: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _global(self, local: np.ndarray) -> jax.Array:
        shape = (self._batch_size, *local.shape[1:])
        return jax.make_array_from_process_local_data(self._sharding, local, shape)

    def __iter__(self) -> DeviceStream:
        return self

    def __next__(self) -> RawBatch:
        kind, value = self._queue.get()
        if kind == "batch":
            return value
        self._queue.put((kind, value))  # Every later `next` raises it too.
        raise _reported(value)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        close = getattr(self._batches, "close", None)
        if close is not None:
            close()


def _reported(error: BaseException) -> BaseException:
    """Grain's words for a worker that died, as `DataWorkerDied`; other errors as they are."""
    message = str(error)
    if isinstance(error, RuntimeError) and "Worker process was terminated" in message:
        return DataWorkerDied(
            f"a data-loading worker process died ({message.split('.')[0].lower()}; killed, "
            "or out of memory?)"
        )
    return error


def make_stream_evaluator(
    apply_fn: Callable[..., jax.Array],
    variables: dict[str, Any],
    reader: EvalReader,
    mesh: Mesh,
    task: str,
    preprocess: Callable[[jax.Array], jax.Array],
    *,
    per_class: bool = False,
) -> Callable[[dict[str, Any]], Metrics]:
    """`variables -> {"loss_sum", "count"[, "correct", ...]}` (device sums, as the device
    path's evaluator gives them) over the streamed held-out split, batch after batch, added in
    the device path's order; compiled here for the shapes of `variables` (replicated on `mesh`)."""

    def sums(variables: dict[str, Any], raw: RawBatch) -> Metrics:
        batch = {"image": preprocess(raw["image"]), "label": raw["label"], "weight": raw["weight"]}
        return eval_step(variables, batch, apply_fn=apply_fn, task=task, per_class=per_class)

    def add_batch(variables: dict[str, Any], totals: Metrics, raw: RawBatch) -> Metrics:
        return jax.tree.map(jnp.add, totals, sums(variables, raw))

    sharding = batch_sharding(mesh)
    abstract = abstract_batch(reader.example_spec(), reader.batch_size, mesh)
    # Zeros shaped as one batch's sums: the model's outputs decide which sums there are.
    shapes = jax.eval_shape(sums, variables, abstract)

    def zeros() -> Metrics:
        return replicate(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes), mesh)

    add = jax.jit(add_batch, out_shardings=replicated(mesh)).lower(variables, zeros(), abstract)
    add = add.compile()

    def evaluate(variables: dict[str, Any]) -> Metrics:
        import grain

        dataset = (
            grain.MapDataset.range(len(reader))
            .map(reader)
            .batch(len(reader.rows))
            .to_iter_dataset(grain.ReadOptions(num_threads=_threads(), prefetch_buffer_size=2))
        )
        stream = DeviceStream(iter(dataset), sharding, reader.batch_size)
        totals = zeros()
        try:
            for _ in range(reader.batches):
                totals = add(variables, totals, next(stream))
        finally:
            stream.close()
        return totals

    return evaluate
