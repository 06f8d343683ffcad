"""One short training run under a `tf.distribute` strategy, for test_distribute.

    python tests/distributed_training.py STRATEGY[,STRATEGY] OUTPUT.npz [--batch_norm | --sync_batch_norm]
    python tests/distributed_training.py STRATEGY[,STRATEGY] OUTPUT.npz --applications

Trains a tiny `small_cnn` on two classes of `cifar10_mini` (128 images in
a fixed order) for three epochs with `StochasticWeightAveraging` from
epoch 1 and writes the final
(averaged) weights, the weights before averaging, the averaged epochs and
the loss history to OUTPUT.npz, with the weights' paths. `--sync_batch_norm`
uses BatchNorm with `synchronized=True`, whose batch statistics are those
of the global batch, so that a replicated run trains like one device.
`--applications` instead fine-tunes a keras.applications MobileNetV3Small
(the shipped `cifar10-source` weights; two epochs of `kt.transfer.fine_tune`'s phase 2: the top
block and the head train, BatchNorm frozen) at a global batch of 32 images (16 per replica on two) and writes its
losses, weights and probabilities on test images.
`mirrored` replicates over two logical CPU
devices; `multi_worker` reads the cluster from `TF_CONFIG`. Devices and
collectives are fixed when TensorFlow starts, so a process sets them up once:
`default,mirrored` trains under each in turn (the default strategy on the
first logical CPU) and writes OUTPUT_default.npz and OUTPUT_mirrored.npz.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def main(names, output, batch_norm, synchronized=False, applications=False):
    if "mirrored" in names:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import kerastrain as kt  # noqa: PLC0415 (after the device setup)

    for name in names:
        devices = ["/cpu:0", "/cpu:1"] if name == "mirrored" else None
        strategy = kt.distribute.get_strategy(name, devices=devices)
        path = output if len(names) == 1 else output.replace(".npz", f"_{name}.npz")
        if applications:
            _fine_tune(strategy, path)
        else:
            _train(strategy, path, batch_norm, synchronized)


def _train(strategy, output, batch_norm, synchronized):
    """A small CNN with SWA under `strategy`."""
    import keras  # noqa: PLC0415

    import kerastrain as kt  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    data = kt.data.load("cifar10_mini", classes=["airplane", "frog"],
                        labels_per_class=64, validation_fraction=0)
    # One fixed order, so that every strategy sees the same batches.
    images, labels = (np.concatenate(a) for a in zip(*data.train.as_numpy_iterator()))
    train = tf.data.Dataset.from_tensor_slices((images, labels)).batch(32)
    with strategy.scope():
        model = kt.models.small_cnn(2, width=8, blocks=1, batch_norm=batch_norm)
        if synchronized:
            model = _synchronized(model)
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    swa = kt.callbacks.StochasticWeightAveraging(start_epoch=1, bn_update_data=train)
    history = model.fit(train, epochs=3, callbacks=[swa], shuffle=False,
                        verbose=0)
    np.savez(output, replicas=strategy.num_replicas_in_sync,
             paths=np.asarray([v.path for v in model.weights]),
             loss=np.asarray(history.history["loss"]),
             averaged_epochs=np.asarray(swa.averaged_epochs),
             **{f"weight_{i}": w for i, w in enumerate(model.get_weights())},
             **{f"final_{i}": w for i, w in enumerate(swa.final_weights)})


def _fine_tune(strategy, output):
    """Two-phase fine-tuning of a keras.applications backbone under `strategy`."""
    import keras  # noqa: PLC0415

    import kerastrain as kt  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    # A global batch of 32 either way: 32 on one device, 16 per replica on two.
    batch_size = kt.distribute.global_batch_size(32 // strategy.num_replicas_in_sync,
                                                 strategy)
    data = kt.data.load("cifar10_mini", classes=["airplane", "frog"],
                        labels_per_class=32, validation_fraction=0)
    images, labels = (np.concatenate(a) for a in zip(*data.train.as_numpy_iterator()))
    train = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)
    with strategy.scope():
        # Random weights give constant codes (nothing would train): the
        # shipped source weights.
        features = kt.transfer.backbone(None, (32, 32, 3), weights="cifar10-source")
        model = kt.transfer.build_classifier(features, 2, dropout=0.0, seed=0)  # no masks
    # Phase 2 only (the top blocks and the head train, BatchNorm frozen).
    _, tuned = kt.transfer.fine_tune(model, train, head_epochs=0, finetune_epochs=2,
                                     finetune_lr=0.01, optimizer="sgd", verbose=0)
    test_images = np.concatenate([x for x, _ in data.test.as_numpy_iterator()])[:8]
    np.savez(output, replicas=strategy.num_replicas_in_sync, batch_size=batch_size,
             paths=np.asarray([v.path for v in model.weights]),
             loss=np.asarray(tuned.history["loss"]),
             predicted=keras.ops.convert_to_numpy(
                 keras.ops.softmax(model.predict(test_images, verbose=0))),
             **{f"weight_{i}": w for i, w in enumerate(model.get_weights())})


def _synchronized(model):
    """The same model (same initial weights) with synchronized BatchNorm."""
    import keras  # noqa: PLC0415

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.BatchNormalization):
            config["synchronized"] = True
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


if __name__ == "__main__":
    flags = sys.argv[3:]
    main(sys.argv[1].split(","), sys.argv[2], "--batch_norm" in flags or "--sync_batch_norm" in flags,
         synchronized="--sync_batch_norm" in flags, applications="--applications" in flags)
