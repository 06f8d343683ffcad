"""Fixtures shared by the recipe tests."""

import keras
import pytest


@pytest.fixture
def crash_at_step(monkeypatch):
    """`crash_at_step(run, config, step)`: runs `run(config)` and makes it
    crash (a `RuntimeError`) in the middle of training, at the end of its
    `step`-th optimizer step counted over the whole run, as a killed process
    would stop; the crash is checked and the patch undone."""
    def crash(run, config, step):
        original = keras.callbacks.TerminateOnNaN.on_batch_end
        done = []

        def crashing(self, batch, logs=None):
            done.append(batch)
            if len(done) == step:
                raise RuntimeError("simulated crash")
            return original(self, batch, logs)

        monkeypatch.setattr(keras.callbacks.TerminateOnNaN, "on_batch_end", crashing)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run(config)
        monkeypatch.setattr(keras.callbacks.TerminateOnNaN, "on_batch_end", original)

    return crash
