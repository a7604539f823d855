"""Image classification data sets by name or path: `mnist5k`, any prepared TFDS set, image
folders (`folder:PATH`), `synthetic`.

from zoo.data import load_dataset, open_dataset
dataset = load_dataset("mnist5k")        # 4,000 / 1,000 real MNIST digits, offline, in memory
dataset.train.images, dataset.train.labels, dataset.class_names
source = open_dataset("folder:~/photos")  # listed and checked, nothing decoded yet

The names load `zoo.data.sets` (and TensorFlow Datasets) on first use, so that the data-loading
worker processes, which need only `zoo.data.sampling` and `zoo.data.transforms`, start without it.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zoo.data.sets import (
        DATA_DIR_ENV,
        DATASETS,
        DEVICE_PATH_MAX_BYTES,
        DIGIT_SETS,
        PUBLIC_TFDS_SETS,
        Dataset,
        DataSource,
        Split,
        load_dataset,
        make_synthetic,
        open_dataset,
        process_rows,
        read_dataset,
        resolve_data_dir,
        source_of,
    )

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "DEVICE_PATH_MAX_BYTES",
    "DIGIT_SETS",
    "PUBLIC_TFDS_SETS",
    "DataSource",
    "Dataset",
    "Split",
    "load_dataset",
    "make_synthetic",
    "open_dataset",
    "process_rows",
    "read_dataset",
    "resolve_data_dir",
    "source_of",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from zoo.data import sets

        return getattr(sets, name)
    raise AttributeError(f"module 'zoo.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
