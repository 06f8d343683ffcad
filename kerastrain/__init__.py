"""kerastrain: training techniques that make Keras 3 image models generalise.

    import kerastrain as kt

    data = kt.data.load("cifar10_mini")
    train = kt.augment.Augmentation.from_policy("standard", seed=0).apply(data.train)

Every technique lives in its own module, re-exported here: `augment`,
`callbacks`, `data`, `distribute`, `ensemble`, `export`, `layers`,
`lr_finder`, `models`, `optimizers`, `plots`, `regularizers`, `sanity`,
`schedules`, `search`, `toy_problems`, `transfer`.
"""

from kerastrain import augment
from kerastrain import averaging
from kerastrain import callbacks
from kerastrain import data
from kerastrain import distribute
from kerastrain import ensemble
from kerastrain import export
from kerastrain import layers
from kerastrain import lr_finder
from kerastrain import models
from kerastrain import optimizers
from kerastrain import plots
from kerastrain import regularizers
from kerastrain import sanity
from kerastrain import schedules
from kerastrain import search
from kerastrain import toy_problems
from kerastrain import transfer

__version__ = "0.1.0"
