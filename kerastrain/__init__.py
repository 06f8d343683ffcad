"""kerastrain: training techniques that make Keras 3 image models generalise.

    import kerastrain as kt

    data = kt.data.load("cifar10_mini")
    train = kt.augment.Augmentation.from_policy("standard", seed=0).apply(data.train)

Every technique lives in its own module, re-exported here: `data`, `augment`,
`layers`, `regularizers`, `models`, `optimizers`, `schedules`, `plots`.
"""

from kerastrain import augment
from kerastrain import data
from kerastrain import layers
from kerastrain import models
from kerastrain import optimizers
from kerastrain import plots
from kerastrain import regularizers
from kerastrain import schedules

__version__ = "0.1.0"
