"""Training for jax-zoo: `zoo train MODEL` from the command line, or from Python:

    import zoo.training
    run = zoo.training.train("lenet5", epochs=3)  # lenet5's preset, as `zoo train lenet5`
    run.model.predict(raw_uint8_images)

`train` applies the model's preset and the CPU settings (`zoo.configure_cpu()`), as the
command line does; `fit(TrainConfig(...))` is the loop itself and applies neither.

Modules, in the order a run flows through them: `config` (every setting) -> `zoo.data` (data
sets by name or path) -> `experiment` (model, optimizer, mesh, the data path) -> `loop` (epochs,
checkpoints, NaN guard) -> `pipeline` (data on the devices) or `streaming` (data read from
storage) and `step` (the jitted work) -> `report` (progress bar, JSONL log).
"""

from zoo.training.api import EarlyStopping, arrays, configure, train
from zoo.training.config import TrainConfig
from zoo.training.evaluate import evaluate_saved
from zoo.training.loop import Callback, FitResult, TrainingDiverged, fit
from zoo.training.streaming import DataWorkerDied

__all__ = [
    "Callback",
    "DataWorkerDied",
    "EarlyStopping",
    "FitResult",
    "TrainConfig",
    "TrainingDiverged",
    "arrays",
    "configure",
    "evaluate_saved",
    "fit",
    "train",
]
