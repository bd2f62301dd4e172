"""The built-in model organism: a small Llama trained here on the synthetic world, and its oracle.

The *full* model is trained on every concept of the world; the *oracle* is the identical recipe
(same tokenizer, same init seed, same optimiser) with one concept's documents removed, i.e.
exact unlearning. Memorising the world is a sharp phase transition (accuracy sits near chance
for many epochs, then jumps), so both models train until every trained concept reaches
``target_acc`` QA accuracy, not for a fixed number of epochs: an oracle stopped at the full
model's epoch count can stop before its transition.

Models are cached under ``$UNLEARN_AUDIT_CACHE`` (default ``~/.cache/unlearn-audit``) in a
directory keyed by a hash of the world, model and training config; a second call loads them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from . import progress
from .data.encode import IGNORE, pack_texts
from .errors import UserInputError
from .subject.subject import Subject, load_pretrained, set_threads, to_device
from .training import TrainConfig, seed_everything, train
from .training.dp import (
    DEFAULT_DELTA,
    DPSGD,
    epsilon_spent,
    group_privacy,
    noise_multiplier_for,
    poisson_batches,
)
from .world import World, build_world, corpus, qa_pairs, world_config
from .world.render import concept_documents

CACHE_VERSION = 2  # bump when the recipe changes in a way the config does not capture (2: fused AdamW)
# the DP organisms' own version (in their cache key only): 2: documents whole, not cut at seq_len
DP_PIPELINE = 2
BOS = "<|endoftext|>"
PAD = "<|pad|>"


@dataclass(frozen=True)
class OrganismPreset:
    """Model and training recipe of an organism. See the module docstring for the protocol."""

    world: str = "default"
    vocab_size: int = 1024
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    seq_len: int = 128
    batch_size: int = 32
    lr: float = 3e-3
    beta2: float = 0.98
    warmup_steps: int = 100
    max_grad_norm: float = 1.0
    target_acc: float = 0.97
    max_epochs: int = 150
    # DP-SGD (training/dp.py): a target epsilon per document (inf: the DP pipeline, no noise
    # and no clipping), its delta, the per-example clipping norm and the expected batch (DP
    # wants large batches: the noise's share of the mean gradient falls as 1/batch; at the
    # ordinary 16 documents an epsilon-8 micro organism learns nothing); None: ordinary training
    dp_epsilon: float | None = None
    dp_delta: float = DEFAULT_DELTA
    dp_max_grad_norm: float = 1.0
    dp_batch_size: int = 256

    @property
    def identity(self) -> dict:
        """What the cache key holds: every field, the DP ones only for a DP organism (so the
        ordinary organisms' keys are those they had before DP existed)."""
        fields = asdict(self)
        if self.dp_epsilon is None:
            for name in ("dp_epsilon", "dp_delta", "dp_max_grad_norm", "dp_batch_size"):
                fields.pop(name)
        else:
            fields["dp_pipeline"] = DP_PIPELINE
        return fields


PRESETS: dict[str, OrganismPreset] = {
    # seconds on a laptop CPU; for tests
    "micro": OrganismPreset(world="micro", vocab_size=384, hidden_size=64, num_layers=2,
                            num_heads=2, intermediate_size=256, seq_len=64, batch_size=16,
                            warmup_steps=30, target_acc=0.95, max_epochs=200),
    # ~1.2M parameters, 5 concepts x 20 entities; the default subject
    "default": OrganismPreset(),
    # 10 concepts, a wider model
    "large": OrganismPreset(world="large", vocab_size=2048, hidden_size=256, num_layers=6,
                            num_heads=8, intermediate_size=1024),
}


_DP_PRESET = re.compile(r"^(?P<base>[a-z]+)-dp(?P<eps>inf|\d+(?:\.\d+)?)(?:-delta(?P<delta>[0-9.e-]+))?"
                        r"(?:-clip(?P<clip>\d+(?:\.\d+)?))?$")


def dp_preset_name(preset: str, epsilon: float, delta: float = DEFAULT_DELTA, max_grad_norm: float = 1.0) -> str:
    """The name of ``preset`` trained with DP-SGD: ``micro-dp8``, ``default-dpinf``,
    ``micro-dp1-delta1e-06-clip0.5`` (delta and clip only where not the defaults)."""
    name = f"{preset}-dp{'inf' if math.isinf(epsilon) else f'{epsilon:g}'}"
    if delta != DEFAULT_DELTA:
        name += f"-delta{delta:g}"
    if max_grad_norm != 1.0:
        name += f"-clip{max_grad_norm:g}"
    return name


def get_preset(name: str) -> OrganismPreset:
    """A preset by name; ``<preset>-dp<epsilon>[-delta<d>][-clip<c>]`` is ``<preset>`` trained
    with DP-SGD (:func:`dp_preset_name`)."""
    m = _DP_PRESET.match(name)
    if m and m.group("base") in PRESETS:
        try:
            delta = float(m.group("delta")) if m.group("delta") else DEFAULT_DELTA
        except ValueError:
            delta = -1.0
        eps = float(m.group("eps"))
        if not (0 < delta < 1) or eps <= 0:
            raise UserInputError(f"organism preset {name!r}: epsilon must be > 0 and delta in (0, 1)")
        return replace(PRESETS[m.group("base")], dp_epsilon=eps, dp_delta=delta,
                       dp_max_grad_norm=float(m.group("clip") or 1.0))
    if name not in PRESETS:
        raise UserInputError(f"unknown organism preset {name!r}; choose one of: {', '.join(PRESETS)} "
                             "(or <preset>-dp<epsilon>, e.g. micro-dp8)")
    return PRESETS[name]


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The organism cache: ``cache_dir``, else ``$UNLEARN_AUDIT_CACHE``, else ``~/.cache/unlearn-audit``."""
    root = Path(cache_dir or os.environ.get("UNLEARN_AUDIT_CACHE") or Path.home() / ".cache" / "unlearn-audit")
    root = root.expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise UserInputError(f"cache directory {str(root)!r} is not writable ({e.strerror}); "
                             "set UNLEARN_AUDIT_CACHE to a writable directory") from None
    return root


def organism_key(preset_name: str, seed: int) -> str:
    preset = get_preset(preset_name)
    blob = json.dumps({"preset": preset.identity, "world": asdict(world_config(preset.world, seed)),
                       "seed": seed, "version": CACHE_VERSION}, sort_keys=True)
    return f"{preset_name}-s{seed}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def train_tokenizer(docs: list[str], vocab_size: int):
    """Byte-level BPE trained on the world's text, as a ``PreTrainedTokenizerFast``.

    ``<|endoftext|>`` is BOS and EOS (prepended to every encoded text, and separating packed
    documents); ``<|pad|>`` pads.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=BOS, pad_token=PAD)


def build_model(preset: OrganismPreset, tokenizer, seed: int):
    """A randomly initialised ``LlamaForCausalLM`` of the preset's shape (tied embeddings)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size, num_hidden_layers=preset.num_layers,
        num_attention_heads=preset.num_heads, num_key_value_heads=preset.num_heads,
        max_position_embeddings=max(256, 2 * preset.seq_len), tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    seed_everything(seed)
    return LlamaForCausalLM(config)


def concept_accuracy(subject: Subject, world: World) -> dict[str, float]:
    """QA accuracy (training phrasing, both halves) per concept."""
    from .metrics import EvalSuite

    return EvalSuite(subject, concept_qa(world)).accuracies(subject.model)


def document_examples(tokenizer, docs: list[str], max_len: int) -> dict[str, torch.Tensor]:
    """One right-padded row per document, ``EOS doc EOS`` (as the packed stream joins them),
    labels -100 on the padding. ``max_len`` is the model's context: a DP example is a whole
    document (the privacy unit), not a packed row, so it is cut only where the model cannot see
    further (cutting at the packed ``seq_len`` lost 16% of the micro world's tokens: 50 of its 732
    documents are longer than 64 tokens). A longer document is an error, not a silent cut."""
    eos = tokenizer.eos_token_id
    rows = [[eos] + ids + [eos] for ids in tokenizer(list(docs), add_special_tokens=False)["input_ids"]]
    width = max(len(r) for r in rows)
    if width > max_len:
        raise UserInputError(f"a training document has {width} tokens, more than the model's {max_len} "
                             "positions; DP-SGD trains on whole documents: give the preset a larger seq_len")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, IGNORE)}


def concept_qa(world: World, exclude: tuple[str, ...] = ()) -> dict[str, list]:
    """Per concept not in ``exclude``, its entities' QA pairs (training phrasing): what
    :func:`fit` checks the accuracy target on."""
    excluded = {world.concept(c).name for c in exclude}
    return {c.name: [q for e in c.entities for q in qa_pairs(world.entities[e])]
            for c in world.concepts if c.name not in excluded}


def fit(subject: Subject, recipe, docs: list[str], checked: dict[str, list], seed: int, label: str) -> dict:
    """Train ``subject`` on ``docs`` until every group of ``checked`` QA pairs (per concept)
    reaches ``recipe.target_acc`` accuracy (checked once an epoch; at once without any) or
    ``recipe.max_epochs``; returns the training statistics. ``recipe`` is an
    :class:`OrganismPreset` or a :class:`BaseRecipe` (the fields they share, and a
    ``BaseRecipe``'s optional ones)."""
    from .metrics import EvalSuite

    model, tokenizer, device = subject.model, subject.tokenizer, subject.device
    suite = EvalSuite(subject, checked) if checked else None
    rng = random.Random(seed)
    accum = getattr(recipe, "grad_accum_steps", 1)
    dp_epsilon = getattr(recipe, "dp_epsilon", None)
    if dp_epsilon is not None:  # one example is one document: the privacy unit
        examples = document_examples(tokenizer, docs, model.config.max_position_embeddings)
        batch_size = min(recipe.dp_batch_size, len(docs))
        steps_per_epoch = max(1, round(len(docs) / batch_size))
        batches = poisson_batches(examples, batch_size / len(docs), seed)
    else:
        rows_per_epoch = pack_texts(tokenizer, docs, recipe.seq_len, random.Random(0)).shape[0]
        steps_per_epoch = max(1, rows_per_epoch // (recipe.batch_size * accum))

        def packed():
            while True:
                rows = pack_texts(tokenizer, docs, recipe.seq_len, rng)
                for i in range(steps_per_epoch * accum):
                    ids = rows[i * recipe.batch_size:(i + 1) * recipe.batch_size]
                    yield {"input_ids": ids, "labels": ids}

        batches = packed()

    def loss_fn(batch):
        ids = batch["input_ids"].to(device)
        return model(input_ids=ids, labels=ids, use_cache=False).loss

    state = {"epochs": 0, "accuracy": {}}

    def on_epoch(step: int, loss: float) -> bool:
        if step % steps_per_epoch:
            return False
        state["epochs"] += 1
        acc = suite.accuracies(model) if checked else {}
        state["accuracy"] = acc
        return min(acc.values(), default=1.0) >= recipe.target_acc

    warmup = recipe.warmup_steps if recipe.warmup_steps is not None else steps_per_epoch
    config = TrainConfig(steps=recipe.max_epochs * steps_per_epoch, lr=recipe.lr,
                         betas=(0.9, recipe.beta2), warmup_steps=warmup,
                         max_grad_norm=recipe.max_grad_norm if dp_epsilon is None else None, seed=seed,
                         weight_decay=getattr(recipe, "weight_decay", 0.0), grad_accum_steps=accum,
                         gradient_checkpointing=getattr(recipe, "gradient_checkpointing", False))
    dp = None
    if dp_epsilon is not None:
        # sigma for the planned steps; stopping early at the accuracy target spends less
        sample_rate = batch_size / len(docs)
        sigma = noise_multiplier_for(dp_epsilon, recipe.dp_delta, sample_rate, config.steps)
        dp = DPSGD(sigma, None if math.isinf(dp_epsilon) else recipe.dp_max_grad_norm,
                   expected_batch_size=batch_size, seed=seed)
    start = time.perf_counter()
    log = train(model, loss_fn, batches, config, on_step=on_epoch, description=f"training {label}", dp=dp)
    elapsed = time.perf_counter() - start
    model.eval()
    reached = min(state["accuracy"].values(), default=1.0) >= recipe.target_acc if state["epochs"] else False
    if not reached:
        progress.warn(f"{label} stopped at {recipe.max_epochs} epochs below the "
                     f"accuracy target {recipe.target_acc}: {state['accuracy']}")
    if dp is None:
        tokens = log.steps * recipe.batch_size * accum * recipe.seq_len
    else:  # expected tokens: each step draws each document with probability q
        tokens = int(log.steps * sample_rate * int(examples["attention_mask"].sum()))
    stats = {"epochs": state["epochs"], "steps": log.steps, "train_s": round(elapsed, 2), "tokens": tokens,
             "reached_target": reached, "final_loss": log.losses[-1] if log.losses else None}
    if dp is not None:
        stats["dp"] = {"target_epsilon": dp_epsilon, "delta": recipe.dp_delta, "noise_multiplier": dp.noise_multiplier,
                       "max_grad_norm": dp.max_grad_norm, "sample_rate": sample_rate, "documents": len(docs),
                       "planned_steps": config.steps, "steps": log.steps,
                       "epsilon": epsilon_spent(dp.noise_multiplier, sample_rate, log.steps, recipe.dp_delta)}
    return stats


def organism(preset: str = "default", seed: int = 0, concept: str | None = None, *,
             cache_dir: str | os.PathLike | None = None, threads: int | None = None,
             retrain: bool = False) -> tuple[Subject, Subject]:
    """The full organism and its oracle (trained without ``concept``), from cache or trained now.

    Args:
        preset: ``micro`` (seconds; tests), ``default`` (~1.2M params) or ``large``.
        seed: seeds the world, the initialisation and the data order.
        concept: the concept the oracle never sees (name or index); default: the first concept.
        cache_dir: overrides ``$UNLEARN_AUDIT_CACHE``.
        threads: CPU threads for training (default: all cores).
        retrain: ignore the cache and train again.
    Returns:
        ``(full, oracle)`` subjects on the CPU, each with ``info["organism"]`` holding its
        preset, world, removed concept, per-concept accuracy and training statistics.
    """
    spec = get_preset(preset)
    world = build_world(world_config(spec.world, seed))
    removed = world.resolve_concept(0 if concept is None else concept).name
    root = cache_root(cache_dir) / "organisms" / organism_key(preset, seed)
    full_dir, oracle_dir = root / "full", root / f"oracle-{removed}"
    if not retrain and (full_dir / "model.safetensors").is_file() and (oracle_dir / "model.safetensors").is_file():
        return load_pretrained(full_dir, device="cpu"), load_pretrained(oracle_dir, device="cpu")

    set_threads(threads)
    root.mkdir(parents=True, exist_ok=True)
    tok_dir = root / "tokenizer"
    if tok_dir.is_dir() and not retrain:
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    else:
        tokenizer = train_tokenizer(corpus(world), spec.vocab_size)
        tmp = root / ".tokenizer.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(tok_dir, ignore_errors=True)
        os.replace(tmp, tok_dir)

    base_info = {"preset": preset, "seed": seed, "world": {"preset": spec.world, "seed": seed},
                 "concepts": world.concept_names}
    subjects = []
    for kind, exclude, path in (("full", (), full_dir), ("oracle", (removed,), oracle_dir)):
        if not retrain and (path / "model.safetensors").is_file():
            subjects.append(load_pretrained(path, device="cpu"))
            continue
        label = f"organism:{preset}@{seed}" if kind == "full" else f"oracle:{preset}/{removed}@{seed}"
        subject = Subject(build_model(spec, tokenizer, seed), tokenizer, label, answer_eos=True)
        stats = fit(subject, spec, corpus(world, exclude), concept_qa(world, exclude), seed, label)
        if "dp" in stats:  # what the guarantee says about the removed concept's documents together
            k = len(concept_documents(world, removed))
            eps, delta = group_privacy(stats["dp"]["epsilon"], spec.dp_delta, k)
            stats["dp"]["concept_group"] = {"concept": removed, "documents": k, "epsilon": eps, "delta": delta}
        params = sum(p.numel() for p in subject.model.parameters())
        subject.info = {"organism": {**base_info, "kind": kind,
                                     "removed_concept": removed if kind == "oracle" else None,
                                     "params": params, "accuracy": concept_accuracy(subject, world),
                                     **stats}}
        subject.save(path)
        subjects.append(subject)
    return subjects[0], subjects[1]


@dataclass(frozen=True)
class BaseRecipe:
    """How the world is fine-tuned into a pretrained causal LM (:func:`based_organism`).

    TOFU's protocol (``locuslab/tofu@bdc209e:config/finetune.yaml``, ``finetune.py``): one
    recipe fine-tunes the base once on every concept (the full model) and once without one (the
    retain model, our oracle); lr 1e-5, weight decay 0.01, batch 16, one epoch of warm-up, bf16
    on a GPU. TOFU trains a fixed 5 epochs; here, as for the organism, both models train until
    every trained concept reaches ``target_acc`` (an oracle stopped at the full model's epoch
    count can stop short), at a constant rate after the warm-up. ``lora_r`` > 0 trains LoRA
    adapters instead (TOFU's alpha 32, dropout 0.05; the peft extra) and saves only them.
    """

    world: str = "default"
    lr: float = 1e-5
    weight_decay: float = 0.01
    batch_size: int = 16
    grad_accum_steps: int = 1
    seq_len: int = 256
    beta2: float = 0.999
    warmup_steps: int | None = None   # None: one epoch (TOFU)
    max_grad_norm: float = 1.0
    target_acc: float = 0.9
    max_epochs: int = 20
    lora_r: int = 0
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    gradient_checkpointing: bool = False


def _base_identity(base: str) -> dict:
    """What a base's cache key holds: for a local directory its resolved path, config and weight
    files' sizes and modification times (a base saved again is trained again); else its hub
    name (its revision is the caller's)."""
    path = Path(base).expanduser()
    if not path.is_dir():
        return {"hub": base}
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".json"))
    return {"path": str(path.resolve()),
            "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


def based_key(base: str, recipe: BaseRecipe, seed: int, revision: str | None = None) -> str:
    """``base-<name>-<world>-s<seed>-<hash>``: the cache directory of a base's full model and oracles."""
    blob = json.dumps({"base": _base_identity(base), "revision": revision, "recipe": asdict(recipe),
                       "world": asdict(world_config(recipe.world, seed)), "seed": seed,
                       "version": CACHE_VERSION}, sort_keys=True)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(base.rstrip("/")).name or base)[:40]
    return f"base-{name}-{recipe.world}-s{seed}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def based_organism(base: str, seed: int = 0, concept: str | None = None, *, recipe: BaseRecipe | None = None,
                   cache_dir: str | os.PathLike | None = None, device: str | None = "auto",
                   dtype: str | None = "auto", revision: str | None = None, trust_remote_code: bool = False,
                   threads: int | None = None, retrain: bool = False) -> tuple[Subject, Subject]:
    """The built-in world fine-tuned into a pretrained causal LM: ``(full, oracle)``, from cache
    or trained now (:class:`BaseRecipe`), so residual knowledge is measured on a real
    architecture and tokenizer with an exact-unlearning oracle.

    Args:
        base: a model directory saved with ``save_pretrained``, or a hub name.
        seed: seeds the world and the data order.
        concept: the concept the oracle never sees (name or index; default: the first).
        recipe: the fine-tuning recipe (default :class:`BaseRecipe`).
        device, dtype, revision, trust_remote_code: as :func:`~unlearn_audit.subject.load_pretrained`.
        retrain: ignore the cache and train again.
    Returns:
        Subjects asked in the world's ``Question: ...\nAnswer:`` format (the documents' own),
        answers ending with EOS, with ``info["organism"]`` as the organism's (``base`` and
        ``recipe`` in place of ``preset``). With LoRA, the saved directories hold adapters and
        load on top of ``base``.
    """
    from .data.encode import DEFAULT_PROMPT_TEMPLATE
    from .params import LoraSettings
    from .subject.lora import with_lora

    recipe = recipe or BaseRecipe()
    world = build_world(world_config(recipe.world, seed))
    removed = world.resolve_concept(0 if concept is None else concept).name
    root = cache_root(cache_dir) / "organisms" / based_key(base, recipe, seed, revision)
    full_dir, oracle_dir = root / "full", root / f"oracle-{removed}"
    local = Path(base).expanduser().is_dir()
    base_ref = str(Path(base).expanduser().resolve()) if local else base

    def load(path: Path) -> Subject:
        return load_pretrained(path, device=device, dtype=dtype, trust_remote_code=trust_remote_code)

    set_threads(threads)
    subjects = []
    for kind, exclude, path in (("full", (), full_dir), ("oracle", (removed,), oracle_dir)):
        if not retrain and ((path / "model.safetensors").is_file() or (path / "adapter_model.safetensors").is_file()):
            subjects.append(load(path))
            continue
        label = f"{Path(base).name or base}+world:{recipe.world}@{seed}" + ("" if kind == "full" else f"-{removed}")
        subject = load_pretrained(base, device=device, dtype=dtype, revision=revision,
                                  trust_remote_code=trust_remote_code, prompt_template=DEFAULT_PROMPT_TEMPLATE)
        subject.name, subject.answer_eos, subject.system_prompt = label, True, None
        seed_everything(seed)  # the adapters' initialisation
        if recipe.lora_r:
            subject.model = with_lora(subject.model, LoraSettings(recipe.lora_r, recipe.lora_alpha, recipe.lora_dropout))
        stats = fit(subject, recipe, corpus(world, exclude), concept_qa(world, exclude), seed, label)
        subject.info = {"organism": {"base": base_ref, "revision": revision, "recipe": asdict(recipe),
                                     "seed": seed, "world": {"preset": recipe.world, "seed": seed},
                                     "concepts": world.concept_names, "kind": kind,
                                     "removed_concept": removed if kind == "oracle" else None,
                                     "params": sum(p.numel() for p in subject.model.parameters()),
                                     "accuracy": concept_accuracy(subject, world), **stats},
                        **({"lora_base": base_ref} if recipe.lora_r else {})}
        root.mkdir(parents=True, exist_ok=True)
        subject.save(path)
        subjects.append(subject)
    return subjects[0], subjects[1]


def loaded_from(subject: Subject) -> Path | None:
    """The cache an organism subject was loaded from or saved to (``<cache>/organisms/<key>/full``),
    so that its oracles come from the same one; None (the default cache) for anything else."""
    meta = subject.info.get("organism")
    if not meta or not subject.path:
        return None
    path = Path(subject.path)
    key = (organism_key(meta["preset"], meta["seed"]) if "preset" in meta
           else based_key(meta["base"], BaseRecipe(**meta["recipe"]), meta["seed"], meta.get("revision")))
    if path.parent.name == key and path.parent.parent.name == "organisms":
        return path.parents[2]
    return None


def organism_world(subject: Subject) -> World | None:
    """The world an organism subject was trained on (None for other subjects)."""
    meta = subject.info.get("organism")
    if not meta:
        return None
    return build_world(world_config(meta["world"]["preset"], meta["world"]["seed"]))


_ORGANISM_SPEC = re.compile(
    r"^(?P<kind>organism|oracle)(?::(?P<preset>[a-z][a-z0-9.-]*))?(?:/(?P<concept>[^@]+))?(?:@(?P<seed>\d+))?$")


def is_organism_spec(name_or_path: str | os.PathLike) -> bool:
    """Whether ``name_or_path`` names the built-in organism (``organism:...`` / ``oracle:...``)."""
    return _ORGANISM_SPEC.match(str(name_or_path)) is not None


def load_subject(name_or_path: str | os.PathLike, *, device: str | torch.device | None = "auto",
                 dtype: str | torch.dtype | None = "auto", trust_remote_code: bool = False,
                 revision: str | None = None, model_args: dict | None = None,
                 prompt_template: str | None = None, system_prompt: str | None = None) -> Subject:
    """Load a subject by local path, hub name, or built-in organism spec: the one resolver of
    ``organism:<preset>[@<seed>]`` / ``oracle:<preset>[/<concept>][@<seed>]`` (trained and cached
    on first use); anything else goes to :func:`unlearn_audit.subject.load_pretrained`, whose
    arguments these are."""
    m = _ORGANISM_SPEC.match(str(name_or_path))
    if not m:
        return load_pretrained(name_or_path, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                               revision=revision, model_args=model_args, prompt_template=prompt_template,
                               system_prompt=system_prompt)
    if revision or model_args:
        raise UserInputError(f"{name_or_path}: revision and model_args are for Hugging Face models, not the organism")
    if prompt_template is not None or system_prompt is not None:
        raise UserInputError(f"{name_or_path}: the organism is asked in the template it was trained on; "
                             "prompt_template and system_prompt are for Hugging Face models")
    full, oracle = organism(m.group("preset") or "default", int(m.group("seed") or 0), concept=m.group("concept"))
    chosen = full if m.group("kind") == "organism" else oracle
    return chosen if device in (None, "auto", "cpu") else to_device(chosen, device, dtype)


__all__ = ["PRESETS", "BaseRecipe", "OrganismPreset", "based_organism", "cache_root", "is_organism_spec", "load_subject", "loaded_from", "organism", "organism_world",
           "train_tokenizer"]


