"""Subjects: any HF causal LM (by name or path), its prompt, its module map and interventions."""

from .subject import Subject, load_pretrained, pick_device, set_threads

__all__ = ["Subject", "load_pretrained", "pick_device", "set_threads"]
