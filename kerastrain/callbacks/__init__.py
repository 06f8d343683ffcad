"""Keras callbacks, one public class per module."""

from kerastrain.callbacks.backup import BackupAndRestore
from kerastrain.callbacks.lr_logger import LearningRateLogger
from kerastrain.callbacks.snapshot import SnapshotEnsemble
from kerastrain.callbacks.swa import StochasticWeightAveraging
from kerastrain.callbacks.unfreezing import GradualUnfreezing
