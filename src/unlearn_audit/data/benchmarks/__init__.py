"""The field's benchmarks as targets: ``tofu:<split>``, ``wmdp:<domain>``, ``muse:<corpus>``.

A spec names the benchmark and its split, and optionally a local copy of the published files:
``tofu:forget10``, ``tofu:forget10@/data/TOFU``, ``wmdp:bio@~/wmdp``, ``muse:news@muse_bench/data``.
Without ``@DIR`` the copy under ``$UNLEARN_AUDIT_BENCHMARKS/<benchmark>`` is read when that
variable is set, else the hub (``datasets`` extra). Each loader module states the layout it
reads and where its field names come from.
"""

from __future__ import annotations

from ...errors import UserInputError
from .items import BenchmarkData, Continuation, MCItem, TruthItem
from .source import local_dir

BENCHMARKS = ("tofu", "wmdp", "muse")
CONFIGS = {"tofu": ("forget01", "forget05", "forget10"), "wmdp": ("bio", "cyber", "chem"),
           "muse": ("news", "books")}

__all__ = ["BENCHMARKS", "BenchmarkData", "Continuation", "MCItem", "TruthItem", "is_benchmark_spec",
           "load_benchmark", "parse_benchmark_spec"]


def is_benchmark_spec(spec: str) -> bool:
    return spec.split(":", 1)[0] in BENCHMARKS and ":" in spec


def parse_benchmark_spec(spec: str) -> tuple[str, str, str | None]:
    """``<benchmark>:<config>[@DIR]`` -> (benchmark, config, DIR or None)."""
    bench, _, rest = spec.partition(":")
    config, _, directory = rest.partition("@")
    if bench not in BENCHMARKS or not config:
        raise UserInputError(f"bad benchmark target {spec!r}; write tofu:forget10, wmdp:bio or muse:news, "
                             "optionally followed by @DIR (a local copy of the published files)")
    if config not in CONFIGS[bench]:
        raise UserInputError(f"unknown {bench} split {config!r} in {spec!r}; choose one of: "
                             f"{', '.join(CONFIGS[bench])}")
    return bench, config, directory or None


def load_benchmark(spec: str, seed: int = 0):
    """The Target for a benchmark spec (see the module docstring)."""
    bench, config, given = parse_benchmark_spec(spec)
    directory = local_dir(bench, given)
    if bench == "tofu":
        from .tofu import load_tofu
        return load_tofu(config, directory, seed)
    if bench == "wmdp":
        from .wmdp import load_wmdp
        return load_wmdp(config, directory, seed)
    from .muse import load_muse
    return load_muse(config, directory, seed)
