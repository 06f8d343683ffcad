"""Keras callbacks, one public class per module."""

from kerastrain.callbacks.lr_logger import LearningRateLogger
