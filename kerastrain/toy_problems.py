"""Two-dimensional test functions for watching real optimizers move.

The classic optimization pictures (momentum crossing a narrow valley, SGD
stalling at a saddle point, Adam taking unit-sized steps) are usually drawn
with hand-written update rules. `optimize_2d` runs the actual Keras
optimizers instead (whatever `kerastrain.optimizers.build` returns), on a
function of two coordinates written with `keras.ops`, and returns the path,
so the pictures and the claims tested about them hold for the code users
train with.

Each test function is a `ToyProblem`: the function `f(x, y)` (elementwise,
so it also evaluates a whole grid for a contour plot), a start point, its
global minima and their value, and a plotting window.
"""

import dataclasses
from typing import Callable

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from kerastrain import _checks


@dataclasses.dataclass(frozen=True)
class ToyProblem:
    """A 2-D test function with its minima and a window to draw it in.

    Attributes:
        name: short name (`"quadratic"`, `"saddle"`, `"rosenbrock"`).
        function: `f(x, y)` written with `keras.ops`, elementwise.
        start: default start point `(x, y)`.
        minima: the global minimisers `((x, y), ...)`.
        minimum_value: `f` at the minimisers.
        x_range: `(low, high)` of the plotting window along x.
        y_range: `(low, high)` of the plotting window along y.
    """

    name: str
    function: Callable
    start: tuple
    minima: tuple
    minimum_value: float
    x_range: tuple
    y_range: tuple

    def grid(self, points=200):
        """Returns `(x, y, z)` arrays of shape `(points, points)` over the window."""
        x, y = np.meshgrid(np.linspace(*self.x_range, points),
                           np.linspace(*self.y_range, points))
        return x, y, evaluate(self.function, np.stack([x, y], axis=-1))


def ill_conditioned_quadratic(condition_number=100.0):
    """`f = (x^2 + condition_number * y^2) / 2`: a long, narrow valley.

    Its Hessian is `diag(1, condition_number)`: gradient descent must keep
    the learning rate below `2 / condition_number` to stay stable across the
    valley, and then crawls along it, shrinking x by `1 - lr` per step. Heavy
    ball momentum `m` shrinks both coordinates by about `sqrt(m)` per step
    for any rate in `[(1 - sqrt(m))^2, (1 + sqrt(m))^2] / eigenvalue`, which
    is why it wins here. The valley is axis-aligned, which per-coordinate
    methods (AdaGrad, RMSProp, Adam) exploit.

    Args:
        condition_number: ratio of the largest to the smallest curvature,
            >= 1. Defaults to `100.0`.

    Returns:
        A `ToyProblem` named `"quadratic"`.
    """
    kappa = _checks.check_real("condition_number", condition_number, low=1)
    return ToyProblem(
        name="quadratic", function=lambda x, y: 0.5 * (x**2 + kappa * y**2),
        start=(-4.5, 1.0), minima=((0.0, 0.0),), minimum_value=0.0,
        x_range=(-5.0, 5.0), y_range=(-1.5, 1.5))


def saddle():
    """`f = x^2 + y^4 / 4 - y^2 / 2`: a saddle at the origin between two minima.

    The origin (value 0) is a saddle: curving up along x, down along y. The
    minima are `(0, +-1)` with value `-1/4`. The x axis (`y == 0`) is the
    saddle's stable manifold: there the y gradient, `y^3 - y`, is exactly 0,
    so gradient descent started on it converges to the saddle and stays.
    """
    return ToyProblem(
        name="saddle", function=lambda x, y: x**2 + 0.25 * y**4 - 0.5 * y**2,
        start=(1.5, 1e-3), minima=((0.0, 1.0), (0.0, -1.0)), minimum_value=-0.25,
        x_range=(-2.0, 2.0), y_range=(-1.6, 1.6))


def rosenbrock(a=1.0, b=100.0):
    """Rosenbrock's banana `f = (a - x)^2 + b (y - x^2)^2`, minimum `(a, a^2)`.

    The minimum lies in a curved, flat-bottomed valley: easy to fall into,
    slow to follow. The start `(-1.2, 1)` is Rosenbrock's own (1960).
    """
    a = _checks.check_real("a", a)
    b = _checks.check_real("b", b, low=0, low_open=True)
    return ToyProblem(
        name="rosenbrock", function=lambda x, y: (a - x) ** 2 + b * (y - x**2) ** 2,
        start=(-1.2, 1.0), minima=((a, a * a),), minimum_value=0.0,
        x_range=(-2.0, 2.0), y_range=(-1.0, 3.0))


_PROBLEMS = {"quadratic": ill_conditioned_quadratic, "saddle": saddle,
             "rosenbrock": rosenbrock}


def get(name, **kwargs):
    """Returns the `ToyProblem` called `name` (`quadratic`, `saddle`, `rosenbrock`)."""
    if name not in _PROBLEMS:
        raise ValueError(f"Unknown toy problem {name!r}: expected one of "
                         f"{sorted(_PROBLEMS)}")
    return _PROBLEMS[name](**kwargs)


def optimize_2d(function, start, optimizer, steps):
    """Runs a Keras optimizer on `f(x, y)` and returns the points it visits.

    The point is one float32 variable of shape `(2,)`; every step computes the
    gradient of `function(point[0], point[1])` and hands it to
    `optimizer.apply_gradients`, exactly as `model.fit` would. The loop runs
    in one `tf.function`.

    Args:
        function: `f(x, y)` returning a scalar, written with `keras.ops`.
        start: the start point `(x, y)`.
        optimizer: a fresh (not yet built) `keras.optimizers.Optimizer`.
        steps: number of optimizer steps, >= 1.

    Returns:
        A float array of shape `(steps + 1, 2)`: the start, then the point
        after each step.

    Example:

    >>> problem = toy_problems.get("rosenbrock")
    >>> path = optimize_2d(problem.function, problem.start,
    ...                    kerastrain.optimizers.build("adam", 0.05), steps=300)
    >>> evaluate(problem.function, path)[-1]
    """
    start = np.asarray(start, dtype=np.float64)
    if start.shape != (2,) or not np.all(np.isfinite(start)):
        raise ValueError(f"Invalid value for `start`: expected two finite numbers "
                         f"(x, y), received start={start.tolist()!r}")
    _checks.check_int("steps", steps, minimum=1)
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise ValueError("Invalid value for `optimizer`: expected a keras optimizer "
                         f"(e.g. kerastrain.optimizers.build('adam')), received {optimizer!r}")
    if optimizer.built:
        raise ValueError("Invalid value for `optimizer`: it is already built for other "
                         "variables; pass a fresh optimizer for every run.")
    point = keras.Variable(start.astype(np.float32), name="point")
    optimizer.build([point])

    @tf.function
    def run():
        path = tf.TensorArray(tf.float32, size=steps + 1).write(0, point.value)
        for step in tf.range(steps):
            with tf.GradientTape() as tape:
                value = function(point[0], point[1])
            if value.shape.rank:
                raise ValueError("`function(x, y)` must return a scalar for scalar "
                                 f"x and y, received shape {value.shape}")
            optimizer.apply_gradients([(tape.gradient(value, point), point)])
            path = path.write(step + 1, point.value)
        return path.stack()

    # Every optimizer is a new Python object, so every call traces `run`
    # once by design; TensorFlow's "frequent retracing" warning is noise here.
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        return run().numpy().astype(np.float64)
    finally:
        logger.setLevel(level)


def evaluate(function, points):
    """Evaluates `f(x, y)` at `points` of shape `(..., 2)`; returns shape `(...)`."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim < 1 or points.shape[-1] != 2:
        raise ValueError(f"Invalid value for `points`: expected shape (..., 2), "
                         f"received shape {points.shape}")
    return np.asarray(ops.convert_to_numpy(function(points[..., 0], points[..., 1])),
                      dtype=np.float64)


def steps_to_tolerance(values, minimum_value, tolerance):
    """The step from which a path stays within `tolerance` of the minimum.

    A method that overshoots (momentum) or keeps taking steps of a fixed
    size (RMSProp) can pass through the tolerance band and leave it again;
    only the step after which it never leaves counts.

    Args:
        values: `f` along a path, `values[0]` at the start.
        minimum_value: the function's minimum.
        tolerance: > 0.

    Returns:
        The smallest index `i` with `values[j] <= minimum_value + tolerance`
        for every `j >= i` (0 is the start), or `None` if the last value is
        outside the band (or not finite).
    """
    _checks.check_real("tolerance", tolerance, low=0, low_open=True)
    inside = np.asarray(values, dtype=np.float64) <= minimum_value + tolerance
    if not inside.size or not inside[-1]:
        return None
    outside = np.flatnonzero(~inside)
    return int(outside[-1]) + 1 if outside.size else 0
