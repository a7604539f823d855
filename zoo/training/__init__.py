"""Training for jax-zoo: `zoo train MODEL` from the command line, or from Python:

    from zoo.training import TrainConfig, fit
    result = fit(TrainConfig(model="lenet5", epochs=3))
    zoo.hub.load(result.name).predict(raw_uint8_images)

Modules, in the order a run flows through them: `config` (every setting) -> `data` (named data
sets) -> `experiment` (model, optimizer, mesh) -> `loop` (epochs, checkpoints, NaN guard) ->
`pipeline` and `step` (the jitted work) -> `report` (progress bar, JSONL log).
"""

from zoo.training.config import TrainConfig
from zoo.training.evaluate import evaluate_saved
from zoo.training.loop import FitResult, TrainingDiverged, fit

__all__ = ["FitResult", "TrainConfig", "TrainingDiverged", "evaluate_saved", "fit"]
