"""Training programs as plain functions, with their schedules, callbacks and checkpoints.

``pretrain`` runs image-report pretraining with the official LoVT recipe and resumes an
interrupted run from its last checkpoint; ``tools.run`` wires it to gin.
"""

from lovt_keras.training.callbacks import (
    BestAndEarlyStopping,
    MetricsLogger,
    ReduceLROnPlateau,
    SetDataEpoch,
    read_metrics,
)
from lovt_keras.training.checkpoints import (
    Checkpointer,
    CheckpointError,
    TrainingState,
    load_checkpoint,
    read_checkpoint_state,
    save_checkpoint,
)
from lovt_keras.training.data import EpochView, first_studies
from lovt_keras.training.pretrain import (
    PretrainResult,
    check_batch_fits_model,
    export_encoders,
    pretrain,
)
from lovt_keras.training.schedules import CosinePerEpoch, CosineWithWarmup
from lovt_keras.training.tensorboard import TensorBoardLogger

__all__ = [
    "BestAndEarlyStopping",
    "CheckpointError",
    "Checkpointer",
    "CosinePerEpoch",
    "CosineWithWarmup",
    "EpochView",
    "MetricsLogger",
    "PretrainResult",
    "ReduceLROnPlateau",
    "SetDataEpoch",
    "TensorBoardLogger",
    "TrainingState",
    "check_batch_fits_model",
    "export_encoders",
    "first_studies",
    "load_checkpoint",
    "pretrain",
    "read_checkpoint_state",
    "read_metrics",
    "save_checkpoint",
]
