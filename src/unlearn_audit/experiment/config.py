"""The experiment file: one YAML document describing a whole matrix of runs.

    subject: {organism: default}          # or {model: path/or/hub-name, oracle: path}
    targets: [world:0]                    # world concepts or target directories
    methods:                              # method -> parameters; a list is a grid axis
      none: {}
      npo_gd: {beta: [1, 3], lr: [1.0e-4, 3.0e-4]}
    attacks:                              # attack -> settings (fixed, not a grid)
      rtt: {steps: [0, 5, 50]}
      unrelated: {}
    seeds: [0, 1]
    out: runs/my-study

Every cartesian product of a method's list-valued parameters is one *setting*; a *cell* is one
target x setting x seed, and every attack runs on the model that cell unlearned. A parameter
that itself takes a list (``dpo``'s ``preferred``) is one value when given a flat list and a
grid axis when given a list of lists. Values are validated by the method's and the attack's own
``Params`` before anything runs, so a typo fails in a second, not after an hour; errors name the
bad key and list the valid ones. Relative paths are relative to the current directory, as on
the command line. The full schema is in ``docs/experiments.md``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import UserInputError


def _default_attacks() -> dict[str, dict]:
    from ..api import DEFAULT_ATTACKS

    return {a: {} for a in DEFAULT_ATTACKS}


class SubjectConfig(BaseModel):
    """The model under audit: the built-in organism, or any Hugging Face causal LM."""

    model_config = ConfigDict(extra="forbid")
    organism: str | None = Field(None, description="Organism preset: micro, default or large.")
    model: str | None = Field(None, description="A model directory or hub name (instead of an organism).")
    oracle: str | None = Field("auto", description="auto: the organism's oracle for each world target; "
                               "a model path or name; or null for none.")
    seed: int = Field(0, description="Seed of the organism (its world, initialisation and data order).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = Field("auto", description="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps.")
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> SubjectConfig:
        if self.organism and self.model:
            raise ValueError("give either organism or model, not both")
        if not self.organism and not self.model:
            self.organism = "default"
        if self.organism:
            from ..subject.organism import PRESETS

            if self.organism not in PRESETS:
                raise ValueError(f"unknown organism preset {self.organism!r}; choose one of: {', '.join(PRESETS)}")
        if self.oracle is not None and self.oracle.lower() in ("none", "null", ""):
            self.oracle = None
        return self

    @property
    def label(self) -> str:
        return f"organism:{self.organism}@{self.seed}" if self.organism else str(self.model)


class Experiment(BaseModel):
    """A whole experiment; see the module docstring and ``docs/experiments.md``."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field("experiment", description="A label for reports.")
    description: str = ""
    subject: SubjectConfig = Field(default_factory=SubjectConfig)
    targets: list[str] = Field(default_factory=lambda: ["world:0"], min_length=1)
    methods: dict[str, dict[str, Any]] = Field(min_length=1)
    attacks: dict[str, dict[str, Any]] = Field(default_factory=_default_attacks)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    agreement: bool = Field(True, description="Also score every model's greedy answers against the original's "
                            "(ROUGE-L, BLEU): one generation per QA set and model, the costliest part of evaluating.")
    out: str | None = Field(None, description="Run directory (default runs/<name>).")
    threads: int | None = Field(None, ge=1, description="CPU threads (default: all cores); not part of the config hash.")

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: Any) -> Any:
        """``target: X`` for ``targets: [X]``; ``seed: N`` for ``seeds: [N]``; a list of names
        for methods or attacks without parameters."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for one, many in (("target", "targets"), ("seed", "seeds")):
            if one in data:
                if many in data:
                    raise ValueError(f"give {one} or {many}, not both")
                data[many] = [data.pop(one)]
        for key in ("methods", "attacks"):
            if isinstance(data.get(key), list):
                data[key] = {str(n): {} for n in data[key]}
            if isinstance(data.get(key), dict):
                data[key] = {k: ({} if v is None else v) for k, v in data[key].items()}
        return data

    @property
    def run_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / self.name


@dataclass(frozen=True)
class Cell:
    """One target x method setting x seed: unlearn once, then run every attack."""

    target: str        # the target spec as written (world:0, a directory)
    method: str        # registered method name
    params: dict       # the method's full validated parameters (seed included)
    setting: str       # readable name: npo_gd, or npo_gd[beta=3,lr=0.0001] when a grid varies
    seed: int
    key: str           # hash of everything that determines the cell's result


# ----------------------------------------------------------------------------- loading

def load_experiment(path: str | Path) -> tuple[Experiment, str]:
    """Read and validate an experiment file. Returns the experiment and the file's text."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"experiment file {str(path)!r} not found; see examples/ for some to copy")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserInputError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: expected a mapping of keys (subject, targets, methods, attacks, seeds, out)")
    return parse_experiment(data, str(path)), text


def parse_experiment(data: dict, where: str = "experiment") -> Experiment:
    """Validate a dict into an :class:`Experiment`, including every method and attack setting."""
    try:
        exp = Experiment(**data)
    except ValidationError as e:
        raise UserInputError(f"{where}: {_describe(e, Experiment)}") from None
    _check_names_and_params(exp, where)
    try:
        expand(exp)  # duplicate seeds or setting names
    except UserInputError as e:
        raise UserInputError(f"{where}: {e}") from None
    return exp


def _describe(e: ValidationError, model: type[BaseModel]) -> str:
    """One line for the first error: the dotted key, what is wrong, the valid keys or choices."""
    err = e.errors()[0]
    loc = [str(x) for x in err["loc"]]
    key = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        owner = model
        for part in loc[:-1]:
            field = owner.model_fields.get(part)
            annotation = field.annotation if field else None
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                owner = annotation
        return f"unknown key {key!r}; valid keys: {', '.join(owner.model_fields)}"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{key}: {msg}"


def _check_names_and_params(exp: Experiment, where: str) -> None:
    from ..audits import audit_names, get_audit
    from ..data.benchmarks import is_benchmark_spec, parse_benchmark_spec
    from ..data.target import parse_world_spec
    from ..methods import method_names

    for i, target in enumerate(exp.targets):
        if target.startswith("world:") or is_benchmark_spec(target):
            try:
                (parse_world_spec if target.startswith("world:") else parse_benchmark_spec)(target)
            except UserInputError as e:
                raise UserInputError(f"{where}: targets.{i}: {e}") from None
        elif not Path(target).is_dir():
            raise UserInputError(f"{where}: targets.{i}: {target!r} is neither world:<concept> nor a directory "
                                 "holding forget.jsonl and retain.jsonl")
    if len(set(exp.targets)) != len(exp.targets):
        raise UserInputError(f"{where}: targets: a target is listed twice")
    for name, settings in exp.methods.items():
        _check_entry(where, "methods", "method", name, settings, method_names(), "parameters")
        for values in method_settings(name, settings):
            _validated_method_params(name, values, where)
    for name, settings in exp.attacks.items():
        _check_entry(where, "attacks", "attack", name, settings, audit_names(), "settings")
        try:
            get_audit(name).params(settings)
        except UserInputError as e:
            raise UserInputError(f"{where}: attacks.{name}: {e}") from None


def _check_entry(where: str, section: str, noun: str, name: str, settings, known: list[str], holds: str) -> None:
    """A ``methods:``/``attacks:`` entry names a known method/attack and maps its settings,
    without a seed (seeds are the matrix's, set at the top level)."""
    if name not in known:
        raise UserInputError(f"{where}: {section}: unknown {noun} {name!r}; choose from: {', '.join(known)}")
    if not isinstance(settings, dict):
        raise UserInputError(f"{where}: {section}.{name}: expected a mapping of {holds}, not {settings!r}")
    if "seed" in settings:
        raise UserInputError(f"{where}: {section}.{name}.seed: set seeds at the top level (seeds: [0, 1])")


def _validated_method_params(name: str, values: dict, where: str = "experiment", seed: int = 0) -> dict:
    from ..methods import get_method

    try:
        return get_method(name).params({**values, "seed": seed}).model_dump()
    except UserInputError as e:
        raise UserInputError(f"{where}: methods.{name}: {e}") from None


# ----------------------------------------------------------------------------- the matrix

def _takes_list(annotation) -> bool:
    """Whether a parameter's type accepts a list (``list[int] | None`` does)."""
    if typing.get_origin(annotation) is list or annotation is list:
        return True
    return any(_takes_list(a) for a in typing.get_args(annotation))


def method_settings(name: str, grid: dict[str, Any]) -> list[dict[str, Any]]:
    """The cartesian product of a method's list-valued parameters, in the order written."""
    from ..methods import get_method

    fields = get_method(name).Params.model_fields
    axes = []
    for key, value in grid.items():
        takes_list = key in fields and _takes_list(fields[key].annotation)
        is_axis = isinstance(value, list) and (not takes_list or all(isinstance(v, list) for v in value))
        if is_axis and not value:
            raise UserInputError(f"methods.{name}.{key}: an empty list gives no settings; give at least one value")
        axes.append([(key, v) for v in value] if is_axis else [(key, value)])
    return [dict(combo) for combo in itertools.product(*axes)]


def format_value(v: Any) -> str:
    """``3.0`` -> ``3``, ``1e-4`` -> ``0.0001``; other values as compact JSON."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return v
    return json.dumps(v, separators=(",", ":"))


def digest(doc: Any) -> str:
    """sha256 of the canonical JSON of ``doc``."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def config_hash(exp: Experiment) -> str:
    """Hash of everything that determines the numbers (not ``out``, ``threads``, ``name`` or
    ``description``): a run directory refuses to resume under a different hash."""
    return digest(hashed_config(exp))[:16]


def hashed_config(exp: Experiment) -> dict:
    return exp.model_dump(exclude={"out", "threads", "name", "description"})


def expand(exp: Experiment) -> list[Cell]:
    """Every cell of the matrix: targets x method settings x seeds, in that nesting order."""
    from ..audits import get_audit

    several_seeds = len(exp.seeds) > 1
    if len(set(exp.seeds)) != len(exp.seeds):
        raise UserInputError(f"seeds: a seed is listed twice: {exp.seeds}")
    attacks = {a: get_audit(a).params(s).model_dump(exclude={"seed"}) for a, s in exp.attacks.items()}
    cells = []
    for target in exp.targets:
        for seed in exp.seeds:
            for method, grid in exp.methods.items():
                settings = method_settings(method, grid)
                varying = [k for k in grid if len({format_value(s[k]) for s in settings}) > 1]
                for values in settings:
                    params = _validated_method_params(method, values, seed=seed)
                    shown = [f"{k}={format_value(params[k])}" for k in varying]
                    if several_seeds:
                        shown.append(f"seed={seed}")
                    setting = f"{method}[{','.join(shown)}]" if shown else method
                    key = digest({"subject": exp.subject.model_dump(), "target": target, "method": method,
                                  "params": params, "seed": seed, "attacks": attacks,
                                  "agreement": exp.agreement})[:20]
                    cells.append(Cell(target, method, params, setting, seed, key))
    seen: dict[tuple[str, str], Cell] = {}
    for c in cells:
        if (c.target, c.setting) in seen:
            raise UserInputError(f"methods.{c.method}: two settings are both named {c.setting!r}; "
                                 "give each grid value once")
        seen[(c.target, c.setting)] = c
    return cells
