"""The base class of the schedules."""

import keras

FLOAT = "float32"


class Schedule(keras.optimizers.schedules.LearningRateSchedule):
    """Base of the schedules here: holds the `name` every config carries."""

    def __init__(self, name):
        super().__init__()
        self.name = name

    def get_config(self):
        return {"name": self.name}

