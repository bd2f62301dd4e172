"""Targets (forget / retain / unrelated sets) and their loaders."""

from .target import Target, load_target, save_target, world_target

__all__ = ["Target", "load_target", "save_target", "world_target"]
