"""A subject: any Hugging Face causal LM plus its tokenizer and how to prompt it.

``load_pretrained`` takes a local directory or a hub name (safetensors only, remote code off
unless asked); :func:`unlearn_audit.organisms.load_subject` adds the built-in organism's specs.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError

from ..data.encode import CHAT, DEFAULT_PROMPT_TEMPLATE, PromptFormat, check_prompt_template
from ..errors import UserInputError
from ..files import (
    MARKER,
    files_under,
    foreign_files,
    prepare_output_dir,
    read_json,
    replace_dir,
    usual_permissions,
)
from . import residency
from .lora import LoraSettings, copy_adapters, is_peft, merged, require_peft, with_lora

INFO_FILE = "unlearn_audit.json"
INTERVENTIONS_FILE = "interventions.safetensors"


@dataclass
class Subject:
    """A causal LM under audit.

    Attributes:
        model: a ``transformers`` ``PreTrainedModel`` with a causal-LM head.
        tokenizer: its tokenizer (pad token always set).
        name: how it was asked for (path, hub name, ``organism:...``) plus what was done to it.
        prompt_template: how a question is asked: ``chat`` (the tokenizer's chat template) or a
            format string in which ``{question}`` is replaced.
        answer_eos: answers end with EOS (true for the organism, whose QA lines are documents):
            exact match then also requires EOS after the answer, i.e. nothing more is said.
        info: provenance (organism preset and world, method and parameters, ...).
        system_prompt: a system turn before every question (chat), or a first line (plain).
    """

    model: torch.nn.Module
    tokenizer: object
    name: str
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    answer_eos: bool = False
    info: dict = field(default_factory=dict)
    path: str | None = None  # the directory it was loaded from or last saved to
    interventions: list = field(default_factory=list)  # inference-time hooks (see interventions.py)
    _handles: list = field(default_factory=list, repr=False)
    system_prompt: str | None = None

    @property
    def prompt(self) -> PromptFormat:
        """How this subject is asked a question (``data.encode.PromptFormat``)."""
        return PromptFormat(self.prompt_template, self.system_prompt)

    def __post_init__(self) -> None:
        residency.track(self.model)
        for iv in self.interventions:
            self._handles += iv.attach(self.model)

    def add_intervention(self, intervention) -> None:
        """Attach an inference-time intervention; it rides along with copies and saves."""
        self.interventions.append(intervention)
        self._handles += intervention.attach(self.model)

    def _detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def copy(self, name: str | None = None, lora: LoraSettings | None = None, merge: bool = False) -> Subject:
        """An independent copy of the weights with the same interventions attached (the
        tokenizer and the interventions' tensors are shared; neither is ever mutated).

        With ``lora``, a LoRA copy instead: the weights shared and frozen, new adapters to
        train (``subject/lora.py``). A subject that carries adapters is copied as its adapters,
        its frozen base shared; with ``merge``, as a whole model with the adapters merged in."""
        self._detach()  # deep-copying a model copies its hooks too; copy it bare, then re-attach
        try:
            if lora is not None:
                model = with_lora(self.model, lora)
            elif is_peft(self.model):
                model = merged(self.model) if merge else copy_adapters(self.model)
            else:
                model = copy.deepcopy(self.model)
        finally:
            for iv in self.interventions:
                self._handles += iv.attach(self.model)
        return Subject(model, self.tokenizer, name or self.name, self.prompt_template, self.answer_eos,
                       copy.deepcopy(self.info), None, [copy.copy(iv) for iv in self.interventions],
                       system_prompt=self.system_prompt)

    def save(self, path: str | os.PathLike, merge: bool = False) -> Path:
        """Save as safetensors + tokenizer + ``unlearn_audit.json``, atomically: written into a
        temporary sibling, then renamed into place. ``path`` must be new, empty, or a model
        directory this tool wrote that holds nothing else (it is replaced whole).

        A subject with LoRA adapters saves the adapters only (PEFT's ``adapter_model.safetensors``;
        loading finds the base where ``info["lora_base"]`` says), or with ``merge`` a whole model
        with the adapters merged into its weights."""
        _quiet_transformers()
        from ..distributed import barrier, data_parallel

        rank, world = data_parallel()
        if rank != 0:  # in a process group the first process writes, the others wait for it
            barrier()
            self.path = str(Path(path).expanduser().resolve())
            return Path(self.path)
        try:
            return self._save(path, merge)
        finally:
            if world > 1:
                barrier()

    def _save(self, path, merge: bool) -> Path:
        path = prepare_output_dir(path, "model", flag="model directory", create=False)
        if path.is_dir() and (extra := foreign_files(path)):
            raise UserInputError(f"model directory {path} holds files unlearn-audit did not write "
                                 f"({', '.join(extra[:3])}); move them, or save to another directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            model = merged(self.model) if merge else self.model
            info = self.info if not (merge and is_peft(self.model)) else {**self.info, "lora_merged": True}
            model.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            (tmp / INFO_FILE).write_text(json.dumps({
                "name": self.name, "prompt_template": self.prompt_template, "system_prompt": self.system_prompt,
                "answer_eos": self.answer_eos, "info": info,
                "interventions": [{"kind": iv.kind, "config": iv.config()} for iv in self.interventions],
            }, indent=2) + "\n")
            if self.interventions:
                from safetensors.torch import save_file

                save_file({f"{i}.{k}": t.detach().cpu().contiguous() for i, iv in enumerate(self.interventions)
                           for k, t in iv.tensors().items()}, str(tmp / INTERVENTIONS_FILE))
            (tmp / MARKER).write_text(json.dumps({"written_by": "unlearn-audit", "kind": "model",
                                                  "files": files_under(tmp)}) + "\n")
            usual_permissions(tmp, directory=True)
            replace_dir(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.path = str(path)
        return path


def _quiet_transformers() -> None:
    """Our progress goes to stderr; HF's per-shard load/save bars are noise around it."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``: cuda > mps > cpu."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():  # one GPU per process under a launcher
            from ..distributed import launched, local_rank

            return torch.device(f"cuda:{local_rank()}") if launched() else torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserInputError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"device {device!r}: this torch build sees no CUDA GPU "
                             f"(torch {torch.__version__}); use --device cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserInputError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserInputError(f"device {device!r}: MPS is not available here; use --device cpu or auto")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise UserInputError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    return dev


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on a GPU that supports it, else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in _DTYPES:
        raise UserInputError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return _DTYPES[dtype]


def set_threads(threads: int | None = None) -> int:
    """Use ``threads`` CPU threads for torch (default: all cores of this machine)."""
    n = threads or os.cpu_count() or 1
    if n < 1:
        raise UserInputError(f"--threads must be >= 1, not {threads}")
    torch.set_num_threads(n)
    return n


# what load_pretrained sets itself: model_args may not override it
_OWN_ARGS = ("dtype", "torch_dtype", "use_safetensors", "trust_remote_code", "revision")


def load_pretrained(name_or_path: str | os.PathLike, *, device: str | torch.device | None = "auto",
                    dtype: str | torch.dtype | None = "auto", trust_remote_code: bool = False,
                    revision: str | None = None, model_args: dict | None = None,
                    prompt_template: str | None = None, system_prompt: str | None = None) -> Subject:
    """Load a subject by local path or hub name (``unlearn_audit.organisms.load_subject`` also
    resolves the built-in organism's specs).

    Args:
        name_or_path: a directory saved with ``save_pretrained``, or a hub name.
        device: ``auto`` (cuda > mps > cpu), or a torch device string.
        dtype: ``auto`` (bf16 on GPU, else float32), ``float32``, ``bfloat16``, ``float16``.
        trust_remote_code: allow a model's own Python code (off by default: it runs arbitrary code).
        revision: a hub branch, tag or commit (Pythia's ``step143000``); for tokenizer and model.
        model_args: further keyword arguments of the model's ``from_pretrained``
            (``attn_implementation``, ``low_cpu_mem_usage``, ...).
        prompt_template: ``chat`` or a format string with ``{question}``; default: what the
            directory's ``unlearn_audit.json`` says, else ``chat`` when the tokenizer has a
            chat template, else ``Question: {question}\nAnswer:``.
        system_prompt: a system turn before every question (default: the saved one, or none).
    Raises:
        UserInputError: the path/name cannot be loaded (missing, no safetensors, not a causal LM),
            or ``model_args`` sets what this function sets itself.
    """
    spec = str(name_or_path)
    clash = sorted(set(model_args or {}) & set(_OWN_ARGS))
    if clash:
        raise UserInputError(f"model_args may not set {', '.join(clash)}: use the dtype, revision and "
                             "trust_remote_code settings")
    by_revision = {"revision": revision} if revision else {}
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import ensemble  # noqa: F401  (registers the SISA ensemble with the Auto classes)

    _quiet_transformers()
    path = Path(spec).expanduser()
    local = path.is_dir()
    if not local and (spec.startswith((".", "/", "~")) or path.exists()):
        raise UserInputError(f"model path {spec!r} is not a directory; give a directory saved "
                             "with save_pretrained, a hub name, or organism:<preset>")
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    source = str(path) if local else spec
    meta = _read_info(path) if local else {}
    adapter = local and (path / "adapter_config.json").is_file()
    base = (meta.get("info") or {}).get("lora_base") if adapter else None
    if adapter and not base:
        raise UserInputError(f"{spec}: an adapter directory without the base model's location "
                             "(info.lora_base in unlearn_audit.json); save it again with --merge")
    peft = require_peft() if adapter else None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **by_revision)
        if adapter:  # LoRA adapters saved by this tool: the base they were trained on, then them
            model = AutoModelForCausalLM.from_pretrained(
                base, dtype=torch_dtype, use_safetensors=True, trust_remote_code=trust_remote_code,
                **(model_args or {}))
            # trainable: a relearning attack with lora_r trains these adapters further
            model = peft.PeftModel.from_pretrained(model, source, is_trainable=True)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=torch_dtype, use_safetensors=True, trust_remote_code=trust_remote_code,
                **by_revision, **(model_args or {}))
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = "directory" if local else "name (not a local directory, and the hub is unreachable or has no such model)"
        raise UserInputError(f"could not load model {spec!r} from this {where}: {first}. "
                             "Only safetensors weights are loaded; pass --trust-remote-code for "
                             "models that need their own code") from None
    model.to(dev).eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    default = CHAT if getattr(tokenizer, "chat_template", None) else DEFAULT_PROMPT_TEMPLATE
    template = prompt_template if prompt_template is not None else meta.get("prompt_template", default)
    check_prompt_template(template, f"model {spec!r}", tokenizer)
    return Subject(model, tokenizer, meta.get("name", spec), template,
                   bool(meta.get("answer_eos", False)), meta.get("info", {}),
                   str(path.resolve()) if local else None, _load_interventions(path, meta),
                   system_prompt=system_prompt if system_prompt is not None else meta.get("system_prompt"))


def _read_info(path: Path) -> dict:
    """``unlearn_audit.json`` of a model directory (``{}`` without one), checked field by field."""
    file = path / INFO_FILE
    if not file.is_file():
        return {}
    meta = read_json(file, "model file")
    where = f"model file {file}"
    if not isinstance(meta, dict):
        raise UserInputError(f"{where}: expected a JSON object; save the model again or remove the file")
    if meta.get("system_prompt") is None:
        meta.pop("system_prompt", None)
    for key, kind in (("name", str), ("info", dict), ("interventions", list), ("answer_eos", bool),
                      ("system_prompt", str)):
        if key in meta and not isinstance(meta[key], kind):
            raise UserInputError(f"{where}: {key!r} must be a {kind.__name__}; save the model again or remove the file")
    if "prompt_template" in meta:
        check_prompt_template(meta["prompt_template"], where)
    return meta


def _load_interventions(path: Path, meta: dict) -> list:
    specs = meta.get("interventions") or []
    if not specs:
        return []
    from safetensors.torch import load_file

    from .interventions import INTERVENTIONS

    file = path / INTERVENTIONS_FILE
    if not file.is_file():
        raise UserInputError(f"{path / INFO_FILE} lists {len(specs)} intervention(s) but {file.name} is "
                             "missing; save the model again")
    try:
        tensors = load_file(str(file))
    except (OSError, SafetensorError) as e:
        raise UserInputError(f"{file}: not a readable safetensors file ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                             "save the model again") from None
    out = []
    for i, spec in enumerate(specs):
        kind = spec.get("kind") if isinstance(spec, dict) else None
        if kind not in INTERVENTIONS:
            raise UserInputError(f"{path} needs intervention {kind!r}, unknown to this version of unlearn-audit")
        mine = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".", 1)[0] == str(i)}
        try:
            out.append(INTERVENTIONS[kind].restore(spec.get("config") or {}, mine))
        except (KeyError, TypeError, ValueError) as e:
            raise UserInputError(f"{file}: intervention {i} ({kind}) cannot be restored ({type(e).__name__}: {e}); "
                                 "save the model again") from None
    return out


def to_device(subject: Subject, device, dtype) -> Subject:
    dev = pick_device(device)
    subject.model.to(device=dev, dtype=pick_dtype(dtype, dev))
    return subject
