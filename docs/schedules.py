"""Draws every learning-rate schedule of kerastrain into docs/schedules.png.

Each panel is one `kerastrain.schedules.get` config, for 30 epochs of 100
steps at a peak rate of 0.1, drawn with `kerastrain.plots.plot_schedule`:

    python docs/schedules.py
"""

import math
import os

import kerastrain as kt

EPOCHS, STEPS_PER_EPOCH, LR = 30, 100, 0.1
CONFIGS = {
    "constant": dict(name="constant", learning_rate=LR),
    "step (x0.1 at epochs 15, 22)": dict(name="step", initial_learning_rate=LR,
                                         boundaries_epochs=[15, 22]),
    "exponential a0 exp(-kt)": dict(name="exponential", initial_learning_rate=LR,
                                    k_per_epoch=math.log(100) / EPOCHS),
    "1/t: a0 / (1 + kt)": dict(name="inverse_time", initial_learning_rate=LR,
                               k_per_epoch=9 / EPOCHS),
    "cosine + 2 warm-up epochs": dict(name="cosine", initial_learning_rate=LR,
                                      decay_epochs=EPOCHS - 2, warmup_epochs=2),
    "cyclical triangular": dict(name="cyclical", base_lr=LR / 10, max_lr=LR,
                                step_size_epochs=3.75),
    "cyclical triangular2": dict(name="cyclical", base_lr=LR / 10, max_lr=LR,
                                 step_size_epochs=3.75, mode="triangular2"),
    "cyclical exp_range": dict(name="cyclical", base_lr=LR / 10, max_lr=LR,
                               step_size_epochs=3.75, mode="exp_range", gamma=0.9995),
    "warm restarts (SGDR, t_mul=2)": dict(name="warm_restarts", initial_learning_rate=LR,
                                          first_cycle_epochs=2, t_mul=2.0),
    "one-cycle": dict(name="one_cycle", max_lr=LR, total_epochs=EPOCHS),
}


def main():
    schedules = {title: kt.schedules.get(config, steps_per_epoch=STEPS_PER_EPOCH)
                 for title, config in CONFIGS.items()}
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schedules.png")
    print(kt.plots.plot_schedule(schedules, EPOCHS * STEPS_PER_EPOCH, path, columns=5))


if __name__ == "__main__":
    main()
