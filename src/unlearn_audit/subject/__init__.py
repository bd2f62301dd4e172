"""Subjects: any HF causal LM (by name or path) and the built-in model organism."""

from .subject import Subject, load_subject, pick_device, set_threads

__all__ = ["Subject", "load_subject", "pick_device", "set_threads"]
