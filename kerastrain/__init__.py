"""kerastrain: training techniques that make Keras 3 image models generalise.

    import kerastrain as kt

    data = kt.data.load("cifar10_mini")
    train = kt.augment.Augmentation.from_policy("standard", seed=0).apply(data.train)

Every technique lives in its own module, re-exported here: `augment`, `averaging`,
`callbacks`, `data`, `distribute`, `ensemble`, `evaluation`, `export`, `layers`,
`lr_finder`, `models`, `optimizers`, `plots`, `regularizers`, `sanity`,
`schedules`, `search`, `toy_problems`, `transfer`.

Importing kerastrain has no side effects: matplotlib is imported by the first
picture, and `search` (with KerasTuner) at the first use of `kerastrain.search`.
"""

import importlib

from kerastrain import augment
from kerastrain import averaging
from kerastrain import callbacks
from kerastrain import data
from kerastrain import distribute
from kerastrain import ensemble
from kerastrain import evaluation
from kerastrain import export
from kerastrain import layers
from kerastrain import lr_finder
from kerastrain import models
from kerastrain import optimizers
from kerastrain import plots
from kerastrain import regularizers
from kerastrain import sanity
from kerastrain import schedules
from kerastrain import toy_problems
from kerastrain import transfer

__version__ = "0.1.0"

_LAZY_MODULES = ("search",)


def __getattr__(name):
    # PEP 562: `kerastrain.search` imports KerasTuner, so it is imported on
    # first access rather than by `import kerastrain`.
    if name in _LAZY_MODULES:
        return importlib.import_module(f"kerastrain.{name}")
    raise AttributeError(f"module 'kerastrain' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_MODULES))
