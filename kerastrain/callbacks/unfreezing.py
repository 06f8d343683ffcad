"""`GradualUnfreezing`: the backbone's top blocks unfreeze one at a time in `fit`.

The blocks and what freezing them means are `kerastrain.transfer`'s
(`unfreeze`, `block_names`); this callback only decides, epoch by epoch, how
many train. It is also importable as `kerastrain.transfer.GradualUnfreezing`.
"""

import keras

from kerastrain import _checks


def _unfreezing():
    """`kerastrain.transfer.unfreezing`, looked up when the callback runs:
    `kerastrain.transfer` imports this module (its `fine_tune` uses the
    callback), so importing it here at load time would be circular."""
    from kerastrain.transfer import unfreezing  # noqa: PLC0415

    return unfreezing


class GradualUnfreezing(keras.callbacks.Callback):
    """Unfreezes the backbone's top blocks one at a time during one `fit`.

    Howard & Ruder, "Universal Language Model Fine-tuning" (ACL 2018): the
    first `epochs_per_block` epochs train the top block, each following
    `epochs_per_block` epochs one more block, until `top` blocks train. All
    within one `fit`, so the learning-rate schedule, the optimizer's moments
    and callbacks such as weight averaging see one run. BatchNorm stays
    frozen (see `kerastrain.transfer.unfreeze`).

    When `fit` starts, the callback unfreezes all `top` blocks, builds the
    optimizer on their variables (unless it is built already; then it must
    know them all), narrows training to the top block and re-traces the
    train step at each change. Keras' `MultiOptimizer` needs a
    gradient for all its variables at each step, so it cannot be combined
    with this callback.

    Args:
        top: blocks (or layers) trainable at the end.
        unit: `"blocks"` or `"layers"`. Defaults to `"blocks"`.
        epochs_per_block: epochs between two unfreezing steps. Defaults to 1.

    Example:

    >>> classifier.compile(keras.optimizers.Adam(1e-4), loss, ["accuracy"])
    >>> classifier.fit(ds, epochs=6, callbacks=[GradualUnfreezing(top=3)])
    """

    def __init__(self, top, unit="blocks", epochs_per_block=1):
        super().__init__()
        self.top = _checks.check_int("top", top, minimum=1)
        self.epochs_per_block = _checks.check_int("epochs_per_block", epochs_per_block,
                                                  minimum=1)
        self.unit = _checks.check_choice("unit", unit, _unfreezing()._UNITS)
        self.history = []  # (epoch, number of unfrozen blocks) at each change

    def on_train_begin(self, logs=None):
        optimizer = self.model.optimizer
        if isinstance(optimizer, keras.optimizers.MultiOptimizer):
            raise ValueError("GradualUnfreezing cannot be used with a "
                             "MultiOptimizer (it needs gradients for all its "
                             "variables at every step); use one optimizer")
        _unfreezing().unfreeze(self.model, self.top, self.unit)
        if not optimizer.built:  # Keras builds it at the first step otherwise.
            with self.model.distribute_strategy.scope():
                optimizer.build(self.model.trainable_variables)
        known = getattr(optimizer, "_trainable_variables_indices", None)
        if known is not None and any(optimizer._var_key(v) not in known
                                     for v in self.model.trainable_variables):
            raise ValueError(
                "The optimizer was built before the top "
                f"{self.top} {self.unit} were unfrozen; recompile the model "
                "(a fresh optimizer) before fit")
        self._first_epoch, self._stage = None, None

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch is None:
            self._first_epoch = epoch
        stage = min(self.top, 1 + (epoch - self._first_epoch) // self.epochs_per_block)
        if stage != self._stage:
            _unfreezing().unfreeze(self.model, stage, self.unit)
            self.model.make_train_function(force=True)
            self._stage = stage
            self.history.append((epoch, stage))
