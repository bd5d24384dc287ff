"""The official downstream training recipe: the optimizer and the Keras callbacks of
schedule and model selection."""

from __future__ import annotations

import keras


def downstream_optimizer(learning_rate: float, weight_decay: float = 1e-6) -> keras.optimizers.Adam:
    """Adam with weight decay 1e-6, the official downstream optimizer.

    The official ``torch.optim.Adam(weight_decay=...)`` adds an L2 term to the gradient;
    Keras applies the decay to the weights directly (AdamW-style). At 1e-6 both are
    negligible next to the gradients.
    """
    return keras.optimizers.Adam(learning_rate=learning_rate, weight_decay=weight_decay)


def downstream_callbacks(
    monitor: str = "val_dice",
    mode: str = "max",
    early_stopping_patience: int = 10,
    reduce_lr: bool = True,
    lr_patience: int = 3,
    lr_factor: float = 0.5,
    checkpoint_path: str | None = None,
    validation_metric: keras.callbacks.Callback | None = None,
) -> list[keras.callbacks.Callback]:
    """The official schedule and model selection as Keras callbacks.

    - ``validation_metric`` first (e.g.
      :class:`~lovt_keras.models.detection_metrics_callback.DetectionMetricsCallback`),
      so that the metric it writes into the epoch logs is there for the callbacks after
      it;
    - ``ReduceLROnPlateau`` on ``val_loss`` (factor 0.5, PyTorch patience 3: the lr drops
      on the 4th epoch without a strict improvement, i.e. Keras ``patience=4``);
    - ``EarlyStopping`` on ``monitor`` (patience 10; 20 for the 1 % RSNA and COVID tasks)
      restoring the weights of the best epoch at the end, so the model tested is the best
      checkpoint;
    - ``ModelCheckpoint`` of the best epoch when ``checkpoint_path`` is given.

    Note: in the official fine-tune mode the lr is reset to the task lr at every step after
    the warm-up, which cancels the plateau reductions; pass ``reduce_lr=False`` to
    reproduce that.

    Args:
        monitor: the validation metric (``val_dice``, ``val_mAP``, ``val_froc``).
        mode: ``"max"`` for those metrics.
        early_stopping_patience: epochs without improvement before stopping.
        reduce_lr: add the plateau schedule.
        lr_patience: PyTorch-style patience of the schedule.
        lr_factor: lr multiplier on plateau.
        checkpoint_path: ``*.keras`` or ``*.weights.h5`` path for the best model.
        validation_metric: a callback computing ``monitor``, placed first.
    """
    callbacks: list[keras.callbacks.Callback] = []
    if validation_metric is not None:
        callbacks.append(validation_metric)
    if reduce_lr:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=lr_factor, patience=lr_patience + 1, mode="min",
                min_delta=0.0,
            )
        )
    callbacks.append(
        keras.callbacks.EarlyStopping(
            monitor=monitor, mode=mode, patience=early_stopping_patience,
            restore_best_weights=True,
        )
    )
    if checkpoint_path is not None:
        callbacks.append(
            keras.callbacks.ModelCheckpoint(
                checkpoint_path, monitor=monitor, mode=mode, save_best_only=True,
                save_weights_only=checkpoint_path.endswith(".weights.h5"),
            )
        )
    return callbacks
