"""Image classification data sets by name or path: `mnist5k`, any prepared TFDS set, image
folders (`folder:PATH`), `synthetic`.

from zoo.data import load_dataset, open_dataset
dataset = load_dataset("mnist5k")        # 4,000 / 1,000 real MNIST digits, offline, in memory
dataset.train.images, dataset.train.labels, dataset.class_names
source = open_dataset("folder:~/photos")  # listed and checked, nothing decoded yet

The names load their modules on first use, and only `zoo.data.sets` loads TensorFlow Datasets:
the data-loading worker processes, which need `zoo.data.sampling` and `zoo.data.transforms`,
start without it.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zoo.data.sets import (
        DEVICE_PATH_MAX_BYTES,
        load_dataset,
        make_synthetic,
        open_dataset,
        process_rows,
        read_dataset,
        resolve_data_dir,
        source_of,
    )
    from zoo.data.source import (
        DATA_DIR_ENV,
        DATASETS,
        DIGIT_SETS,
        PUBLIC_TFDS_SETS,
        Dataset,
        DataSource,
        Split,
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
# The names' modules: the data set types (`zoo.data.source`) need neither JAX nor TensorFlow
# Datasets; everything else is `zoo.data.sets`.
_TYPES = (
    "DATASETS",
    "DATA_DIR_ENV",
    "DIGIT_SETS",
    "PUBLIC_TFDS_SETS",
    "DataSource",
    "Dataset",
    "Split",
)


def __getattr__(name: str) -> Any:
    if name in __all__:
        module = "zoo.data.source" if name in _TYPES else "zoo.data.sets"
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'zoo.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
