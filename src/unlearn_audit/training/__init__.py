"""The shared training loop."""

from .loop import TrainConfig, TrainLog, seed_everything, shuffled_minibatches, train

__all__ = ["TrainConfig", "TrainLog", "seed_everything", "shuffled_minibatches", "train"]
