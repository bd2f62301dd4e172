"""The small experiment several tests run: three cells on the micro organism, two attacks that
share references. ``conftest.matrix_reference`` runs it once, uninterrupted."""

import yaml

# three cells: none, gradient_ascent at 1 and 2 steps; two attacks that share references
MATRIX = {
    "name": "resume-test",
    "subject": {"organism": "micro"},
    "target": "world:0",
    "methods": {"none": {}, "gradient_ascent": {"steps": [1, 2], "lr": 3.0e-4}},
    "attacks": {"rtt": {"checkpoints": [0, 1], "bootstrap": 20}, "logit_lens": {}},
    "seeds": [0],
    "agreement": False,  # greedy generation for ROUGE/BLEU is the slowest part of evaluating
    "threads": 2,
}
SETTINGS = ["none", "gradient_ascent[steps=1]", "gradient_ascent[steps=2]"]


def without_timings(results):
    """``results`` with every ``timings_s`` (wall clock) removed, at any depth."""
    if isinstance(results, dict):
        return {k: without_timings(v) for k, v in results.items() if k != "timings_s"}
    if isinstance(results, list):
        return [without_timings(v) for v in results]
    return results


def write_experiment(path, out, **changes):
    path.write_text(yaml.safe_dump({**MATRIX, **changes, "out": str(out)}, sort_keys=False))
    return path


def finished_cells(out):
    """The cell files in place under run directory ``out``. A dot name is a write in progress
    (pathlib's glob, unlike the shell's, matches those): a test that kills the run the moment a
    cell file appears must not take one of these for a finished cell."""
    return [p for p in (out / "cells").glob("*.json") if not p.name.startswith(".")]
