"""Tests for kerastrain.lr_finder: the LR range test on real CIFAR-10 images."""

import warnings

import keras
import numpy as np
import pytest

from kerastrain import data as kt_data
from kerastrain import lr_finder

MIN_LR, MAX_LR, STEPS = 1e-5, 10.0, 80


def _tiny_cnn(logit_penalty=None):
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Rescaling(1 / 255.0),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, use_bias=False),
        keras.layers.BatchNormalization(momentum=0.9),
        keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dropout(0.1, seed=1),
        keras.layers.Dense(10, activity_regularizer=logit_penalty),
    ])


def _compiled(optimizer, logit_penalty=None):
    model = _tiny_cnn(logit_penalty)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _state(model):
    return [v.numpy() for v in model.variables], [v.numpy() for v in model.optimizer.variables]


def _assert_same_state(before, after):
    for old, new in zip(before, after):
        assert len(old) == len(new)
        assert all(np.array_equal(a, b) for a, b in zip(old, new))


@pytest.fixture(scope="module")
def subset():
    """1000 real CIFAR-10 training images, 100 per class, in 16 batches."""
    return kt_data.load("cifar10_mini", batch_size=64, validation_fraction=0,
                        labels_per_class=100)


@pytest.fixture(scope="module")
def sweep(subset):
    model = _compiled(keras.optimizers.Adam(1e-3))
    initial_weights = model.get_weights()
    result = lr_finder.find_learning_rate(model, subset.train, min_lr=MIN_LR,
                                          max_lr=MAX_LR, steps=STEPS, verbose=0)
    return model, initial_weights, result


def test_sweep_is_exponential_and_smoothed_with_bias_correction(sweep):
    _, _, result = sweep
    n = len(result.learning_rates)
    expected = MIN_LR * (MAX_LR / MIN_LR) ** (np.arange(n) / (STEPS - 1))
    np.testing.assert_allclose(result.learning_rates, expected, rtol=1e-12)
    average, smoothed = 0.0, []
    for i, loss in enumerate(result.losses):
        average = 0.98 * average + 0.02 * loss
        smoothed.append(average / (1 - 0.98 ** (i + 1)))
    np.testing.assert_allclose(result.smoothed_losses, smoothed, rtol=1e-12)
    assert result.smoothed_losses[0] == result.losses[0]
    # Untrained 10-class network: the first loss is near ln(10).
    assert abs(result.losses[0] - np.log(10)) < 0.5


def test_suggestion_lies_well_inside_the_sweep(sweep):
    _, _, result = sweep
    position = np.log(result.suggestion / MIN_LR) / np.log(MAX_LR / MIN_LR)
    assert 0.1 < position < 0.9, (result.suggestion, position)


def test_fresh_model_and_optimizer_are_left_as_they_were(sweep):
    model, initial_weights, _ = sweep
    assert all(np.array_equal(a, b) for a, b in zip(initial_weights, model.get_weights()))
    assert int(model.optimizer.iterations.numpy()) == 0
    slots = [v for v in model.optimizer.variables if "iteration" not in v.path
             and "learning_rate" not in v.path]
    assert slots and all(not np.any(v.numpy()) for v in slots)
    assert np.isclose(float(model.optimizer.learning_rate.numpy()), 1e-3)


def test_training_at_suggestion_beats_min_lr(sweep, subset):
    _, _, result = sweep
    initial = result.losses[0]  # same seed, so the same initial network
    final = {}
    for lr in (MIN_LR, result.suggestion):
        model = _compiled(keras.optimizers.Adam(lr))
        # Training-mode loss of the last epoch: after 48 steps the BatchNorm
        # moving statistics still lag, which would blur an inference-mode loss.
        losses = model.fit(subset.train, epochs=3, shuffle=False, verbose=0).history["loss"]
        assert np.all(np.isfinite(losses))
        final[lr] = losses[-1]
        if lr == result.suggestion:
            assert np.all(np.diff(losses) < 0), losses  # no divergence, not even a bump
    assert final[result.suggestion] < initial - 0.1, (initial, final)
    assert final[result.suggestion] < final[MIN_LR] - 0.1, final


def test_existing_optimizer_state_and_weights_restored_exactly(subset):
    model = _compiled(keras.optimizers.SGD(0.01, momentum=0.9))
    model.fit(subset.train.take(3), epochs=1, shuffle=False, verbose=0)
    before = _state(model)
    assert int(model.optimizer.iterations.numpy()) == 3
    lr_finder.find_learning_rate(model, subset.train, min_lr=1e-4, max_lr=1.0,
                                 steps=20, verbose=0)
    _assert_same_state(before, _state(model))


def test_progress_in_a_log_is_plain_lines(subset, capsys):
    # Under pytest stdout is no terminal, as in a log file or CI.
    model = _compiled(keras.optimizers.SGD(0.01))
    lr_finder.find_learning_rate(model, subset.train, min_lr=1e-4, max_lr=1e-2, steps=20)
    out = capsys.readouterr().out
    assert not set(out) & {"\r", "\b", "\x1b"}
    lines = [line for line in out.splitlines() if line.startswith("LR range test:")]
    assert [line.split()[3] for line in lines] == [f"{n}/20" for n in range(2, 21, 2)]
    assert "lr 0.01," in lines[-1] and "smoothed_loss" in lines[-1]


def test_schedule_restored_and_training_continues_as_if_untouched(subset):
    """A model that ran the test trains on exactly like its untouched twin."""
    def twin():
        schedule = keras.optimizers.schedules.ExponentialDecay(0.05, 10, 0.5)
        return _compiled(keras.optimizers.SGD(schedule, momentum=0.9)), schedule

    (probed, schedule), (untouched, _) = twin(), twin()
    batches = list(subset.train.take(4))
    for model in (probed, untouched):
        for x, y in batches[:2]:
            model.train_on_batch(x, y)
    before = _state(probed)
    lr_finder.find_learning_rate(probed, subset.train, min_lr=1e-4, max_lr=1.0,
                                 steps=20, verbose=0)
    _assert_same_state(before, _state(probed))
    assert probed.optimizer._learning_rate is schedule
    for model in (probed, untouched):
        for x, y in batches[2:]:
            model.train_on_batch(x, y)
    _assert_same_state(_state(untouched), _state(probed))


def test_stops_when_smoothed_loss_diverges(subset):
    model = _compiled(keras.optimizers.SGD(0.01))
    result = lr_finder.find_learning_rate(model, subset.train, min_lr=1e-3,
                                          max_lr=1e6, steps=40, verbose=0)
    assert result.stop_reason == "diverged"
    assert len(result.losses) < 40
    smoothed = result.smoothed_losses
    assert smoothed[-1] > 4 * smoothed[:-1].min()
    assert np.all(smoothed[:-1] <= 4 * np.minimum.accumulate(smoothed[:-1]))


def test_non_finite_loss_ends_sweep_without_recording_it(subset):
    # An L2 penalty on the logits squares them: it overflows to inf once the
    # learning rate has blown the weights up.
    model = _compiled(keras.optimizers.SGD(0.01), keras.regularizers.L2(1e-3))
    weights = model.get_weights()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the suggestion may fall back
        result = lr_finder.find_learning_rate(
            model, subset.train, min_lr=1e-3, max_lr=1e38, steps=60,
            diverge_factor=1e300, verbose=0)
    assert result.stop_reason == "non_finite"
    assert len(result.losses) < 60 and np.all(np.isfinite(result.losses))
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))


def test_plot_writes_png(sweep, tmp_path):
    path = sweep[2].plot(str(tmp_path / "lr_finder.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def _smooth(raw, beta=0.98):
    average, out = 0.0, []
    for i, loss in enumerate(raw):
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta ** (i + 1)))
    return np.array(out)


def _synthetic(steps=100):
    """A range-test shaped raw curve: plateau, descent centred at 1e-3, blow-up."""
    lrs = np.logspace(-7, 1, steps)
    t = np.log10(lrs)
    raw = 2.3 - 1.5 / (1 + np.exp(-(t + 3) / 0.3)) + 0.5 * np.exp(2.0 * (t - 0))
    return lrs, raw


def _naive(lrs, smoothed):
    return lrs[np.argmin(np.gradient(smoothed, np.log10(lrs)))]


def test_suggestion_is_steepest_point_of_a_clean_curve():
    lrs = np.logspace(-6, 0, 120)
    t = np.log10(lrs)
    curve = 2.0 - 1.0 / (1 + np.exp(-(t + 3) / 0.4)) + 0.2 * np.exp(3 * (t + 0.5))
    suggestion = lr_finder.suggest_learning_rate(lrs, curve)
    assert abs(np.log10(suggestion) - (-3)) < 0.1


def test_suggestion_ignores_an_early_spike():
    lrs, raw = _synthetic()  # steepest descent at lr = 1e-3
    spiky = raw.copy()
    spiky[2:4] += 3.0
    assert _naive(lrs, _smooth(spiky)) < 1e-6  # the naive rule picks the spike's decay
    suggestion = lr_finder.suggest_learning_rate(lrs, spiky)
    assert abs(np.log10(suggestion) - (-3)) < 0.2, suggestion


def test_suggestion_is_robust_to_noise():
    lrs, raw = _synthetic()
    misses = []
    for seed in range(10):
        # Noise of a fifth of the whole descent, on every batch.
        noisy = raw + np.random.default_rng(seed).normal(0, 0.3, raw.shape)
        misses.append(np.log10(lr_finder.suggest_learning_rate(lrs, noisy)) - (-3))
    assert np.max(np.abs(misses)) < 0.4 and np.sqrt(np.mean(np.square(misses))) < 0.25, misses


def test_suggestion_from_batch_losses_avoids_the_moving_average_lag():
    """The reason `find_learning_rate` suggests from raw, not smoothed, losses."""
    lrs, raw = _synthetic()
    from_raw = lr_finder.suggest_learning_rate(lrs, raw)
    from_smoothed = lr_finder.suggest_learning_rate(lrs, _smooth(raw))
    assert abs(np.log10(from_raw) - (-3)) < 0.1
    assert np.log10(from_smoothed) - (-3) > 0.5  # beta=0.98 lags ~49 batches


def test_suggestion_falls_back_and_warns_when_loss_never_decreases():
    lrs = np.logspace(-5, 0, 50)
    with pytest.warns(UserWarning, match="never decreases"):
        suggestion = lr_finder.suggest_learning_rate(lrs, np.linspace(1, 3, 50))
    assert np.isclose(suggestion, lrs[5] / 10)


@pytest.mark.parametrize("kwargs, match", [
    (dict(min_lr=0.0), "min_lr"),
    (dict(min_lr=1.0, max_lr=0.5), "max_lr"),
    (dict(steps=3), "steps"),
    (dict(steps=10.0), "steps"),
    (dict(smoothing=1.0), "smoothing"),
    (dict(diverge_factor=1.0), "diverge_factor"),
])
def test_invalid_arguments(subset, kwargs, match):
    model = _compiled("sgd")
    with pytest.raises(ValueError, match=match):
        lr_finder.find_learning_rate(model, subset.train, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_lr=float("inf")), r"`max_lr`: expected min_lr=1e-07 < max_lr < inf"),
    (dict(max_lr=float("nan")), r"`max_lr`: expected min_lr=1e-07 < max_lr < inf"),
    (dict(min_lr=float("inf"), max_lr=float("inf")), r"`min_lr`: expected 0 < min_lr < inf"),
    (dict(min_lr=float("nan")), r"`min_lr`: expected 0 < min_lr < inf"),
    (dict(max_lr=True), r"Invalid value for `max_lr`"),
])
def test_non_finite_learning_rates_are_rejected_before_training(subset, kwargs, match):
    model = _compiled("sgd")
    before = _state(model)
    with pytest.raises(ValueError, match=match):
        lr_finder.find_learning_rate(model, subset.train, steps=5, verbose=0, **kwargs)
    assert model.optimizer.iterations.numpy() == 0
    _assert_same_state(before, _state(model))


def test_uncompiled_model_is_rejected(subset):
    with pytest.raises(ValueError, match="must be compiled"):
        lr_finder.find_learning_rate(_tiny_cnn(), subset.train)


def test_empty_and_one_shot_datasets_are_rejected(subset):
    model = _compiled("sgd")
    with pytest.raises(ValueError, match="no batches"):
        lr_finder.find_learning_rate(model, subset.train.take(0), steps=5, verbose=0)
    one_shot = iter(subset.train.take(2))
    with pytest.raises(ValueError, match="iterated again"):
        lr_finder.find_learning_rate(model, one_shot, steps=5, verbose=0)


def test_invalid_curves_are_rejected():
    lrs = np.logspace(-5, 0, 10)
    with pytest.raises(ValueError, match="same length"):
        lr_finder.suggest_learning_rate(lrs, np.ones(9))
    with pytest.raises(ValueError, match="increasing"):
        lr_finder.suggest_learning_rate(lrs[::-1], np.ones(10))
    with pytest.raises(ValueError, match="finite"):
        lr_finder.suggest_learning_rate(lrs, np.full(10, np.nan))
    with pytest.raises(ValueError, match="skip_start"):
        lr_finder.suggest_learning_rate(lrs, np.ones(10), skip_start=0.5)
