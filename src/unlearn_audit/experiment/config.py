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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import UserInputError
from ..params import MAX_SEED, UtilityConfig


def _default_attacks() -> dict[str, dict]:
    from ..api import DEFAULT_ATTACKS

    return {a: {} for a in DEFAULT_ATTACKS}


class SubjectConfig(BaseModel):
    """The model under audit: the built-in organism, or any Hugging Face causal LM."""

    model_config = ConfigDict(extra="forbid")
    organism: str | None = Field(None, min_length=1, description="Organism preset: micro, default or large "
                                 "(<preset>-dp<epsilon>: trained with DP-SGD, e.g. micro-dp8).")
    model: str | None = Field(None, min_length=1, description="A model directory or hub name (instead of an organism).")
    oracle: str | None = Field("auto", description="auto: the organism's oracle for each world target; "
                               "a model path or name; or null for none.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the organism (its world, initialisation and data order).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = Field("auto", description="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps.")
    trust_remote_code: bool = False
    revision: str | None = Field(None, min_length=1, description="Hub branch, tag or commit of `model` "
                                 "(e.g. Pythia's step143000).")
    model_args: dict[str, Any] = Field(default_factory=dict, description="Further from_pretrained arguments of "
                                       "`model` (attn_implementation, ...).")
    prompt_template: str | None = Field(None, min_length=1, description="How `model` and a model oracle are asked: "
                                        "chat (the tokenizer's chat template; the default when it has one) or a "
                                        "format string with {question}.")
    system_prompt: str | None = Field(None, description="A system turn before every question (`model` and a model oracle).")

    @field_validator("device")
    @classmethod
    def _device_here(cls, device: str) -> str:
        """A device this machine has (``cuda`` on a CPU-only torch fails here, not mid-run)."""
        if device != "auto":
            from ..subject.subject import pick_device

            try:
                pick_device(device)
            except UserInputError as e:
                raise ValueError(str(e)) from None
        return device

    @model_validator(mode="after")
    def _one_kind(self) -> SubjectConfig:
        if self.organism and self.model:
            raise ValueError("give either organism or model, not both")
        if not self.organism and not self.model:
            self.organism = "default"
        if self.organism and (self.revision or self.model_args):
            raise ValueError("revision and model_args are for a Hugging Face model (model:), not the organism")
        if self.organism and (self.prompt_template is not None or self.system_prompt is not None):
            raise ValueError("prompt_template and system_prompt are for a Hugging Face model (model:); the organism "
                             "is asked in the template it was trained on")
        if self.prompt_template is not None:
            from ..data.encode import check_prompt_template

            try:
                check_prompt_template(self.prompt_template, "subject")
            except UserInputError as e:
                raise ValueError(str(e)) from None
        if self.organism:
            from ..organisms import get_preset

            try:
                get_preset(self.organism)
            except UserInputError as e:
                raise ValueError(str(e)) from None
        if self.oracle is not None and self.oracle.lower() in ("none", "null", ""):
            self.oracle = None
        return self

    @property
    def label(self) -> str:
        return f"organism:{self.organism}@{self.seed}" if self.organism else str(self.model)


class ExecutorConfig(BaseModel):
    """``executor:`` of an experiment file: where the cells run (``experiment/executors.py``).
    Not part of the config hash: the same cells give the same numbers on any executor."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["local", "ray", "slurm"] = Field("local", description="local: one cell after another in this "
                                                   "process; ray: Ray tasks; slurm: Slurm job arrays through submitit.")
    max_workers: int | None = Field(None, ge=1, le=100_000, description="Cells running at once (default: ray 1 per "
                                    "cluster CPU / cpus_per_cell; slurm array_parallelism).")
    cpus_per_cell: int | None = Field(None, ge=1, le=4096, description="CPUs each cell holds (default: the run's "
                                      "threads).")
    gpus_per_cell: float = Field(0, ge=0, le=64, description="GPUs each cell holds (Ray's num_gpus; Slurm's "
                                 "gpus_per_node).")
    retries: int = Field(2, ge=0, le=100, description="Times a cell whose worker died or whose job failed is "
                         "submitted again before it counts as failed.")
    address: str | None = Field(None, description="ray: a cluster to join ('auto', 'ray://host:10001'); default: a "
                                "local Ray started for the run and stopped after it.")
    partition: str | None = Field(None, description="slurm: the partition.")
    time_min: int = Field(240, ge=1, le=100_000, description="slurm: the time limit of one cell's job, minutes.")
    array_parallelism: int = Field(32, ge=1, le=100_000, description="slurm: jobs of one array running at once.")
    mem_gb: float | None = Field(None, gt=0, description="slurm: memory of one cell's job.")
    slurm_args: dict[str, Any] = Field(default_factory=dict, description="slurm: further submitit parameters "
                                       "(account, qos, constraint, ...) without the slurm_ prefix.")
    cluster: Literal["slurm", "local"] | None = Field(None, description="slurm: submitit's cluster; 'local' runs "
                                                      "each job as a local process (tests, a workstation).")


class Experiment(BaseModel):
    """A whole experiment; see the module docstring and ``docs/experiments.md``."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field("experiment", min_length=1, max_length=120, pattern=r"^[^/\\\x00-\x1f]+$",
                      description="A label for reports and the default run directory runs/<name> "
                                  "(no slashes or control characters).")
    description: str = ""
    subject: SubjectConfig = Field(default_factory=SubjectConfig)
    targets: list[str] = Field(default_factory=lambda: ["world:0"], min_length=1)
    methods: dict[str, dict[str, Any]] = Field(min_length=1)
    attacks: dict[str, dict[str, Any]] = Field(default_factory=_default_attacks)
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field(default_factory=lambda: [0], min_length=1)
    agreement: bool = Field(True, description="Also score every model's greedy answers against the original's "
                            "(ROUGE-L, BLEU): one generation per QA set and model, the costliest part of evaluating.")
    utility: UtilityConfig | None = Field(None, description="General utility through lm-evaluation-harness on every "
                                          "model: {lm_eval: [mmlu, arc_easy], limit: N} (the lmeval extra).")
    out: str | None = Field(None, description="Run directory (default runs/<name>).")
    threads: int | None = Field(None, ge=1, le=4096, description="CPU threads (default: all cores). The number "
                                "used is part of the config hash: results differ in the last digits by thread count.")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig,
                                     description="Where cells run: {kind: local | ray | slurm, ...} (docs/cluster.md).")

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
    method_params: Any = field(default=None, compare=False, repr=False)  # ``params`` validated: the object


# ----------------------------------------------------------------------------- loading

def _unique_key_loader():
    """A YAML SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the
    last one silently: a second ``methods:`` would replace the first)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"key {key!r} is given twice (first on line {seen[key] + 1})",
                            key_node.start_mark)
                except TypeError:  # an unhashable key: let the base class say so
                    break
                seen[key] = key_node.start_mark.line
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def _check_text(value: Any, where: str) -> None:
    """Every string in the file must be text a file name, a JSON file and a terminal can hold:
    a lone surrogate (``"\\ud800"``) or a NUL byte would fail only when written, after the run."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_text(k, where)
            _check_text(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_text(v, f"{where}.{i}")
    elif isinstance(value, str):
        from ..files import is_text

        if not is_text(value):
            raise UserInputError(f"{where or 'a key'}: {value[:40]!r} is not valid text (a lone surrogate); "
                                 "write plain characters")
        if "\x00" in value:
            raise UserInputError(f"{where or 'a key'}: contains a NUL character")


def load_experiment(path: str | Path) -> tuple[Experiment, str]:
    """Read and validate an experiment file. Returns the experiment and the file's text."""
    import yaml

    from ..files import read_text

    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"experiment file {str(path)!r} not found; see examples/ for some to copy")
    text = read_text(path, "experiment file")
    try:
        data = yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise UserInputError(f"{path}{where}: not valid YAML ({problem})") from None
    except RecursionError:
        raise UserInputError(f"{path}: nested too deeply to be an experiment file") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: expected a mapping of keys (subject, targets, methods, attacks, seeds, out)")
    try:
        _check_text(data, "")
    except UserInputError as e:
        raise UserInputError(f"{path}: {e}") from None
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
    from ..attacks import attack_names, get_attack
    from ..data.benchmarks import is_benchmark_spec, parse_benchmark_spec
    from ..methods import method_names

    for i, target in enumerate(exp.targets):
        if is_benchmark_spec(target):  # parsed only: reading one may mean the hub, or gigabytes
            try:
                parse_benchmark_spec(target)
            except UserInputError as e:
                raise UserInputError(f"{where}: targets.{i}: {e}") from None
            continue
        if not target.startswith("world:") and not Path(target).is_dir():
            raise UserInputError(f"{where}: targets.{i}: {target!r} is neither world:<concept> nor a directory "
                                 "holding forget.jsonl and retain.jsonl")
        try:  # read every target now (milliseconds), so a bad one fails before any run directory exists
            load_config_target(exp, target)
        except UserInputError as e:
            raise UserInputError(f"{where}: targets.{i}: {e}") from None
    if len(set(exp.targets)) != len(exp.targets):
        raise UserInputError(f"{where}: targets: a target is listed twice")
    for name, settings in exp.methods.items():
        _check_entry(where, "methods", "method", name, settings, method_names(), "parameters")
        for values in method_settings(name, settings):
            _validated_method_params(name, values, where)
    for name, settings in exp.attacks.items():
        _check_entry(where, "attacks", "attack", name, settings, attack_names(), "settings")
        try:
            get_attack(name).params(settings)
        except UserInputError as e:
            raise UserInputError(f"{where}: attacks.{name}: {e}") from None


def load_config_target(exp: Experiment, spec: str):
    """The target ``spec`` as the runner will see it: a ``world:`` concept resolves in the
    organism's own world (the runner's ``target_for``), without loading any model."""
    from ..data.target import load_target, parse_world_spec
    from ..world import build_world, world_config

    world = None
    if spec.startswith("world:") and exp.subject.organism:
        preset, _, seed = parse_world_spec(spec)
        if preset is None and seed is None:
            world = build_world(world_config(exp.subject.organism, exp.subject.seed))
    return load_target(spec, world=world)


def _check_entry(where: str, section: str, noun: str, name: str, settings, known: list[str], holds: str) -> None:
    """A ``methods:``/``attacks:`` entry names a known method/attack and maps its settings,
    without a seed (seeds are the matrix's, set at the top level)."""
    if name not in known:
        raise UserInputError(f"{where}: {section}: unknown {noun} {name!r}; choose from: {', '.join(known)}")
    if not isinstance(settings, dict):
        raise UserInputError(f"{where}: {section}.{name}: expected a mapping of {holds}, not {settings!r}")
    if "seed" in settings:
        raise UserInputError(f"{where}: {section}.{name}.seed: set seeds at the top level (seeds: [0, 1])")


def _validated_method_params(name: str, values: dict, where: str = "experiment", seed: int = 0):
    """The method's validated params object (the cell carries it to the method)."""
    from ..methods import get_method

    try:
        return get_method(name).params({**values, "seed": seed})
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
    """Hash of everything that determines the numbers (not ``out``, ``threads``, ``name``,
    ``description`` or ``executor``; the number of threads used is in): a run directory refuses to resume under a
    different hash."""
    return digest(hashed_config(exp))[:16]


def threads_used(exp: Experiment) -> int:
    """CPU threads the run computes with: float sums are ordered by thread, so the last digits
    of a result depend on it (by up to ~1e-7), and a resumed run must not mix counts."""
    import os

    return exp.threads or os.cpu_count() or 1


def utility_key(exp: Experiment) -> dict:
    """The utility settings as the keys and the config hash hold them: nothing without them, so
    the runs of files that ask for none keep their keys."""
    return {"utility": exp.utility.model_dump()} if exp.utility is not None else {}


def hashed_config(exp: Experiment) -> dict:
    return {**exp.model_dump(exclude={"out", "threads", "name", "description", "utility", "executor"}),
            **utility_key(exp),
            "threads": threads_used(exp)}


def expand(exp: Experiment) -> list[Cell]:
    """Every cell of the matrix: targets x method settings x seeds, in that nesting order."""
    from ..attacks import get_attack

    several_seeds = len(exp.seeds) > 1
    if len(set(exp.seeds)) != len(exp.seeds):
        raise UserInputError(f"seeds: a seed is listed twice: {exp.seeds}")
    attacks = {a: get_attack(a).params(s).model_dump(exclude={"seed"}) for a, s in exp.attacks.items()}
    cells = []
    for target in exp.targets:
        for seed in exp.seeds:
            for method, grid in exp.methods.items():
                settings = method_settings(method, grid)
                varying = [k for k in grid if len({format_value(s[k]) for s in settings}) > 1]
                for values in settings:
                    validated = _validated_method_params(method, values, seed=seed)
                    params = validated.model_dump()
                    shown = [f"{k}={format_value(params[k])}" for k in varying]
                    if several_seeds:
                        shown.append(f"seed={seed}")
                    setting = f"{method}[{','.join(shown)}]" if shown else method
                    key = digest({"subject": exp.subject.model_dump(), "target": target, "method": method,
                                  "params": params, "seed": seed, "attacks": attacks,
                                  "agreement": exp.agreement, **utility_key(exp), "threads": threads_used(exp)})[:20]
                    cells.append(Cell(target, method, params, setting, seed, key, validated))
    seen: dict[tuple[str, str], Cell] = {}
    for c in cells:
        if (c.target, c.setting) in seen:
            raise UserInputError(f"methods.{c.method}: two settings are both named {c.setting!r}; "
                                 "give each grid value once")
        seen[(c.target, c.setting)] = c
    return cells
