"""The named model registry: zoo models saved by name with Orbax, verified, loaded by name.

    from zoo import hub
    hub.save("lenet5-mnist", model_name="lenet5", model_config={}, variables=variables,
             step=1000, meta={"dataset": "mnist", "preprocessing": prep.to_dict(),
                              "metrics": {"val_accuracy": 0.99}}, best=("val_accuracy", "max"))
    model = hub.load("lenet5-mnist")
    model.predict(raw_uint8_images)          # class ids

Layout of a registry (see `registry_root` for where it is):

    <root>/<name>/step_<N>/variables/     Orbax StandardSave of {'params', 'batch_stats'?}
                           train_state/   optional Orbax tree, for resuming
                           meta.json      who, what, when: model name + config, metrics, ...
                           manifest.json  sha256 of every file above, written last

A step exists once its folder is renamed into place (`zoo.hub.commit`), is verified against its
manifest before anything is restored (`zoo.hub.manifest`), and must match the rebuilt model's
variables leaf for leaf (`zoo.hub.matching`). Only `zoo.hub.store` imports Orbax.
"""

from zoo.hub.errors import (
    ArchitectureMismatchError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
)
from zoo.hub.loaded import LoadedModel
from zoo.hub.loading import latest_step, load, restore_train_state
from zoo.hub.paths import registry_root
from zoo.hub.records import CheckpointRecord, list_checkpoints
from zoo.hub.saving import save

__all__ = [
    "ArchitectureMismatchError",
    "CheckpointNotFoundError",
    "CheckpointRecord",
    "CorruptCheckpointError",
    "LoadedModel",
    "latest_step",
    "list_checkpoints",
    "load",
    "registry_root",
    "restore_train_state",
    "save",
]
