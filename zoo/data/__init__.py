"""Image classification data sets by name: the embedded `mnist5k`, prepared TFDS sets, `synthetic`.

from zoo.data import load_dataset
dataset = load_dataset("mnist5k")        # 4,000 / 1,000 real MNIST digits, offline
dataset.train.images, dataset.train.labels
"""

from zoo.data.sets import (
    DATA_DIR_ENV,
    DATASETS,
    DIGIT_SETS,
    PUBLIC_TFDS_SETS,
    Dataset,
    Split,
    load_dataset,
    make_synthetic,
    process_rows,
    resolve_data_dir,
)

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "DIGIT_SETS",
    "PUBLIC_TFDS_SETS",
    "Dataset",
    "Split",
    "load_dataset",
    "make_synthetic",
    "process_rows",
    "resolve_data_dir",
]
