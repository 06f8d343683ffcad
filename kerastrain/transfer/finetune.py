"""Fine-tuning in two phases: a new head on a frozen backbone, then top blocks.

BatchNorm keeps its moving statistics in every phase because
`freeze_backbone` and `unfreeze` keep every BatchNormalization layer
`trainable=False`, and Keras runs a non-trainable BatchNormalization in
inference mode. The backbone is also called with `training=False`, as the
Keras transfer-learning guide does, but in Keras 3 that alone does not
protect the statistics: a functional model passes its own `training` flag
down to the layers it calls, overriding the one given when it was built
(tests/test_transfer.py keeps that behaviour as a control). Phase 2 recompiles at a lower learning rate (changing
`trainable` only takes effect at `compile()`), optionally unfreezing the
blocks one by one (`GradualUnfreezing`) or giving lower blocks lower rates
(`discriminative_optimizer`, on Keras' `MultiOptimizer`).
"""

import re

import keras
import numpy as np

from kerastrain import _checks
from kerastrain import lr_finder
from kerastrain import optimizers
from kerastrain import schedules
from kerastrain.transfer.codes import extract_features
from kerastrain.transfer.unfreezing import (GradualUnfreezing, block_names,
                                            freeze_backbone, unfreeze)


def build_classifier(backbone, num_classes, dropout=0.2, seed=None,
                     name="classifier", standardize_on=None):
    """`raw images -> backbone(training=False) -> [standardize] -> Dropout -> logits`.

    The logits layer starts at zero, as in Big Transfer (Kolesnikov et al.,
    2020): the first predictions are uniform, the initial loss is exactly
    `ln(num_classes)`, and the head's first steps learn the signal instead of
    undoing a random projection of large, uncentred CNN codes (a Glorot head
    on such codes starts 2x above `ln(k)` and few-shot phase-1 budgets never
    recover). With `standardize_on`, the codes are also standardised with
    the mean and variance of the codes of those images (as `LinearProbe`
    does), so that one head learning rate suits any backbone's feature
    scale.

    Build it inside `strategy.scope()` to train under `tf.distribute`.

    Args:
        backbone: a feature extractor (from `backbone()` or `cut_backbone()`).
        num_classes: number of classes.
        dropout: dropout rate before the logits, `0 <= dropout < 1`.
            Defaults to `0.2`.
        seed: dropout seed. Defaults to `None`.
        name: model name. Defaults to `"classifier"`.
        standardize_on: `None`, or a dataset of `(images, labels)` batches
            (e.g. `data.train`) whose codes set the standardisation (a
            `keras.layers.Normalization` layer named `"standardize"`; one
            pass of the backbone over the dataset). Defaults to `None`.

    Returns:
        An uncompiled functional `keras.Model` whose only nested model is
        `backbone`, outputting logits (use `from_logits=True`).

    Example:

    >>> model = build_classifier(backbone("MobileNetV3Small"), num_classes=5,
    ...                          standardize_on=data.train)
    """
    _checks.check_int("num_classes", num_classes, minimum=2)
    _checks.check_real("dropout", dropout, 0, 1, high_open=True)
    inputs = keras.Input(backbone.input_shape[1:], name="images")
    # As the Keras guide; the frozen BatchNorm layers (trainable=False) are
    # what keeps their statistics fixed once the outer model trains.
    x = backbone(inputs, training=False)
    if len(x.shape) > 2:
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if standardize_on is not None:
        codes, _ = extract_features(keras.Model(inputs, x), standardize_on, verbose=0)
        x = _standardize(codes)(x)
    if dropout:
        x = keras.layers.Dropout(dropout, seed=seed, name="head_dropout")(x)
    # float32 logits under a mixed precision policy (the Keras guide's advice).
    outputs = keras.layers.Dense(num_classes, kernel_initializer="zeros",
                                 dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def _standardize(codes):
    """A `Normalization` layer with the mean and variance of `codes`.

    The variance is floored at 1% of its mean: a code that is (nearly)
    constant on these images, such as a dead ReLU channel, would otherwise be
    divided by ~0 and explode once it moves in phase 2 or on other images.
    """
    variance = codes.var(axis=0)
    variance = np.maximum(variance, 0.01 * max(float(variance.mean()), 1e-12))
    return keras.layers.Normalization(mean=codes.mean(axis=0), variance=variance,
                                      name="standardize")


def discriminative_optimizer(model, optimizer="adam", learning_rate=1e-4,
                             decay=0.5, **kwargs):
    """One optimizer per trainable backbone block, lower rates lower down.

    Howard & Ruder (ULMFiT, 2018): the head trains at `learning_rate`, the
    top trainable backbone block at `learning_rate * decay`, the next at
    `learning_rate * decay**2`, ... Built on Keras' `MultiOptimizer` with an
    `OptimizerMap` from variable paths, so it saves with the model. Call it
    after `unfreeze` (blocks frozen at that time get no optimizer of their
    own). A schedule is scaled per block; each inner optimizer counts its own
    steps, all advancing together since every trainable variable gets a
    gradient each step. `MultiOptimizer` has no single `learning_rate`, so
    callbacks that read or set it (`LearningRateLogger`, SWA's
    `swa_learning_rate`, `ReduceLROnPlateau`) do not apply.

    Args:
        model: a classifier from `build_classifier`, after `unfreeze`.
        optimizer: optimizer name or config for `kerastrain.optimizers.build`.
            Defaults to `"adam"`.
        learning_rate: rate of the head: a float, a `LearningRateSchedule`
            or a schedule config dict. Defaults to `1e-4`.
        decay: factor per block from the top, `0 < decay <= 1`. Defaults to 0.5.
        **kwargs: further arguments of the optimizer.

    Returns:
        A `keras.optimizers.MultiOptimizer`.

    Example:

    >>> unfreeze(model, top=3)
    >>> model.compile(discriminative_optimizer(model, "adam", 1e-3, 0.5), ...)
    """
    _checks.check_real("decay", decay, 0, 1, low_open=True)
    if isinstance(learning_rate, dict):
        learning_rate = schedules.get(learning_rate)
    trainable = [(name, [v for layer in layers for v in layer.trainable_weights])
                 for name, layers in block_names(model)]
    trainable = [(name, variables) for name, variables in trainable if variables]
    if not trainable:
        raise ValueError("No backbone block is trainable; call "
                         "kerastrain.transfer.unfreeze(model, top=N) first")
    mapping = keras.optimizers.OptimizerMap(
        optimizers.build(optimizer, learning_rate=learning_rate, **kwargs))
    for depth, (_, variables) in enumerate(reversed(trainable), start=1):
        inner = optimizers.build(optimizer, learning_rate=_scaled(
            learning_rate, float(decay) ** depth), **kwargs)
        for variable in variables:
            mapping[re.escape(variable.path)] = inner
    return keras.optimizers.MultiOptimizer(mapping)


def fine_tune(model, data, *, validation_data=None, head_epochs=5,
              finetune_epochs=5, unfreeze_top=1, unit="blocks", gradual=False,
              head_lr=1e-3, finetune_lr=1e-4, block_lr_decay=None,
              optimizer="adam", ema_momentum=None, augmentation=None, callbacks=(),
              finetune_callbacks=(), jit_compile="auto", verbose=2):
    """Runs phase 1 (head on a frozen backbone) then phase 2 (top blocks).

    Phase 1 freezes the backbone and compiles with `head_lr`; phase 2
    unfreezes the top `unfreeze_top` blocks (BatchNorm stays frozen), builds
    a fresh optimizer with `finetune_lr` (a float or a schedule counted from
    the start of phase 2) and continues the epoch count (`initial_epoch =
    head_epochs`). Both phases compile under the model's `tf.distribute`
    strategy, sparse categorical cross-entropy on logits, and accuracy.

    Args:
        model: a classifier from `build_classifier`.
        data: a `kerastrain.data.DataSplits` (its `train`/`validation` are
            used) or a training `tf.data.Dataset`.
        validation_data: validation dataset when `data` is a dataset.
        head_epochs: epochs of phase 1 (0 skips it). Defaults to 5.
        finetune_epochs: epochs of phase 2 (0 skips it). Defaults to 5.
        unfreeze_top: blocks (or layers) unfrozen in phase 2. Defaults to 1.
        unit: `"blocks"` or `"layers"`. Defaults to `"blocks"`.
        gradual: unfreeze the top blocks one per epoch (`GradualUnfreezing`).
            Defaults to `False`.
        head_lr: learning rate of phase 1. Defaults to `1e-3`.
        finetune_lr: (lower) learning rate of phase 2: a float, a
            `LearningRateSchedule` or a schedule config dict. Defaults to `1e-4`.
        block_lr_decay: if set, discriminative rates in phase 2
            (`discriminative_optimizer` with this `decay`). Defaults to `None`.
        optimizer: optimizer name or config for `kerastrain.optimizers.build`
            (e.g. `{"name": "adamw", "weight_decay": 1e-4}`). Defaults to
            `"adam"`.
        ema_momentum: if set, phase 2 keeps an exponential moving average of
            the weights (Keras' `use_ema`), validates on it
            (`SwapEMAWeights`) and ends with it. Defaults to `None`.
        augmentation: optional object with `.apply(dataset)`, e.g. a
            `kerastrain.augment.Augmentation`. Defaults to `None`.
        callbacks: Keras callbacks for both phases. Defaults to `()`.
        finetune_callbacks: callbacks for phase 2 only (weight averaging,
            snapshots). Defaults to `()`.
        jit_compile: Keras `compile`'s `jit_compile` for both phases (XLA;
            `"auto"`: on a GPU or TPU when every layer supports it). Defaults
            to `"auto"`.
        verbose: `fit` verbosity. Defaults to 2.

    Returns:
        `(head_history, finetune_history)`, Keras `History` objects (`None`
        for a skipped phase).

    Example:

    >>> model = build_classifier(backbone(None, weights="source.keras"), 5)
    >>> fine_tune(model, data, head_epochs=5, finetune_epochs=10, unfreeze_top=2)
    """
    _checks.check_int("head_epochs", head_epochs, minimum=0)
    _checks.check_int("finetune_epochs", finetune_epochs, minimum=0)
    if head_epochs + finetune_epochs == 0:
        raise ValueError("Nothing to train: head_epochs=0 and finetune_epochs=0")
    if ema_momentum is not None and block_lr_decay is not None:
        raise ValueError("Pass `ema_momentum` or `block_lr_decay`, not both: "
                         "Keras' MultiOptimizer keeps no moving average")
    if gradual and block_lr_decay is not None:
        raise ValueError("Pass `gradual=True` or `block_lr_decay`, not both: "
                         "Keras' MultiOptimizer cannot skip frozen variables")
    freeze_backbone(model)
    if finetune_epochs:  # Check `unfreeze_top` before spending phase 1.
        unfreeze(model, top=unfreeze_top, unit=unit)
        freeze_backbone(model)
    train = getattr(data, "train", data)
    validation = data.validation if hasattr(data, "train") else validation_data
    if augmentation is not None:
        train = augmentation.apply(train)
    # shuffle=False: a tf.data pipeline shuffles itself.
    fit = dict(x=train, validation_data=validation, shuffle=False, verbose=verbose)
    head = tuned = None
    if head_epochs:
        _compile(model, lambda: optimizers.build(optimizer, learning_rate=head_lr),
                 jit_compile)
        head = model.fit(epochs=head_epochs, callbacks=list(callbacks), **fit)
    if finetune_epochs:
        unfreeze(model, top=unfreeze_top, unit=unit)
        ema = {} if ema_momentum is None else {"use_ema": True,
                                               "ema_momentum": ema_momentum}
        _compile(model, lambda: discriminative_optimizer(
            model, optimizer, finetune_lr, block_lr_decay)
            if block_lr_decay is not None
            else optimizers.build(optimizer, learning_rate=finetune_lr, **ema),
            jit_compile)
        extra = [GradualUnfreezing(unfreeze_top, unit)] if gradual else []
        if ema:
            extra.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
        tuned = model.fit(initial_epoch=head_epochs,
                          epochs=head_epochs + finetune_epochs,
                          callbacks=extra + list(callbacks) + list(finetune_callbacks),
                          **fit)
    return head, tuned


def find_head_learning_rate(model, data, optimizer="adam", augmentation=None,
                            min_lr=1e-5, max_lr=1.0, steps=60):
    """The LR range test (`kerastrain.lr_finder`) on the head of a classifier.

    Freezes the backbone and compiles `model` as phase 1 of `fine_tune` does,
    then sweeps the head's learning rate from `min_lr` to `max_lr`; the
    weights are left exactly as they were (`fine_tune` recompiles). The
    suggestion (where the loss falls fastest) is a rate for phase 1; phase 2
    usually runs at a fraction of it.

    Args:
        model: a classifier from `build_classifier`.
        data: a `kerastrain.data.DataSplits` (its `train` is used) or a
            training `tf.data.Dataset`.
        optimizer: optimizer name or config for `kerastrain.optimizers.build`.
            Defaults to `"adam"`.
        augmentation: optional object with `.apply(dataset)`. Defaults to `None`.
        min_lr: first rate of the sweep. Defaults to `1e-5`.
        max_lr: last rate of the sweep. Defaults to `1.0`.
        steps: batches in the sweep, >= 5. Defaults to 60.

    Returns:
        A `kerastrain.lr_finder.LRFinderResult` (`.suggestion`, `.plot(path)`).

    Example:

    >>> result = find_head_learning_rate(model, data)
    >>> fine_tune(model, data, head_lr=result.suggestion,
    ...           finetune_lr=result.suggestion / 10)
    """
    train = getattr(data, "train", data)
    if augmentation is not None:
        train = augmentation.apply(train)
    freeze_backbone(model)
    _compile(model, lambda: optimizers.build(optimizer, learning_rate=min_lr))
    return lr_finder.find_learning_rate(model, train, min_lr=min_lr, max_lr=max_lr,
                                        steps=steps, verbose=0)


def _compile(model, make_optimizer, jit_compile="auto"):
    # Optimizer variables must be created under the model's strategy.
    with model.distribute_strategy.scope():
        model.compile(make_optimizer(),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"], jit_compile=jit_compile)


def _scaled(learning_rate, factor):
    if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        return schedules.ScaledSchedule(learning_rate, factor)
    return learning_rate * factor
