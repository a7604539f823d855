"""The named model registry: zoo models saved by name with Orbax, verified, loaded by name.

    from zoo import hub
    hub.save("lenet5-mnist", model_name="lenet5", model_config={}, variables=variables,
             step=1000, meta={"dataset": "mnist", "preprocessing": prep.to_dict(),
                              "metrics": {"val_accuracy": 0.99}}, best=("val_accuracy", "max"))
    model = hub.load("lenet5-mnist")
    model.predict(raw_uint8_images)          # class ids
    model.classify(raw_uint8_images, top=5)  # [[Prediction(class_id, name, probability), ...]]
    hub.read_metadata("lenet5-mnist")["metrics"]   # no weights read

Cut by reason to change:
  `zoo.hub.api`      the public API: save, load, read_metadata, list_checkpoints
  `zoo.hub.roots`    where registries are: the user's (written) first, then the shipped one
  `zoo.hub.disk`     the on-disk transaction: layout, names, locks, staging/commit/retire,
                     retention
  `zoo.hub.manifest` the sha256 manifest every step is verified against before it is restored
  `zoo.hub.store`    the Orbax layer (its only importer): one tree written, described, restored,
                     and matched against the tree a model expects
  `zoo.hub.records`  what a step says about itself: meta.json, its model config, CheckpointRecord
  `zoo.hub.loaded`   `LoadedModel`, a restored step ready to classify raw images
"""

from zoo.hub.api import (
    claim_run,
    latest_step,
    list_checkpoints,
    load,
    read_metadata,
    save,
    step_folder,
)
from zoo.hub.disk import check_name
from zoo.hub.errors import (
    ArchitectureMismatchError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
)
from zoo.hub.loaded import LoadedModel, Prediction, top_predictions
from zoo.hub.records import CLASS_NAMES, CheckpointRecord
from zoo.hub.roots import (
    check_outside_registries,
    check_writable,
    registry_root,
    shipped_root,
)

__all__ = [
    "CLASS_NAMES",
    "ArchitectureMismatchError",
    "CheckpointNotFoundError",
    "CheckpointRecord",
    "CorruptCheckpointError",
    "LoadedModel",
    "Prediction",
    "check_name",
    "check_outside_registries",
    "check_writable",
    "claim_run",
    "latest_step",
    "list_checkpoints",
    "load",
    "read_metadata",
    "registry_root",
    "save",
    "shipped_root",
    "step_folder",
    "top_predictions",
]
