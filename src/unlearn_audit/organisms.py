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
import os
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import progress
from .data.encode import pack_texts
from .errors import UserInputError
from .subject.subject import Subject, load_pretrained, set_threads, to_device
from .training import TrainConfig, seed_everything, train
from .world import World, build_world, corpus, qa_pairs, world_config

CACHE_VERSION = 2  # bump when the recipe changes in a way the config does not capture (2: fused AdamW)
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


def get_preset(name: str) -> OrganismPreset:
    if name not in PRESETS:
        raise UserInputError(f"unknown organism preset {name!r}; choose one of: {', '.join(PRESETS)}")
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
    blob = json.dumps({"preset": asdict(preset), "world": asdict(world_config(preset.world, seed)),
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

    suite = EvalSuite(subject, {c.name: [q for e in c.entities for q in qa_pairs(world.entities[e])]
                                for c in world.concepts})
    return suite.accuracies(subject.model)


def _train(preset: OrganismPreset, world: World, tokenizer, seed: int, exclude: tuple[str, ...],
           label: str) -> tuple[Subject, dict]:
    from .metrics import EvalSuite

    docs = corpus(world, exclude=exclude)
    model = build_model(preset, tokenizer, seed)
    subject = Subject(model, tokenizer, label, answer_eos=True)
    trained = [c for c in world.concepts if c.name not in exclude]
    suite = EvalSuite(subject, {c.name: [q for e in c.entities for q in qa_pairs(world.entities[e])]
                                for c in trained})
    rng = random.Random(seed)
    rows_per_epoch = pack_texts(tokenizer, docs, preset.seq_len, random.Random(0)).shape[0]
    steps_per_epoch = max(1, rows_per_epoch // preset.batch_size)

    def batches():
        while True:
            rows = pack_texts(tokenizer, docs, preset.seq_len, rng)
            for i in range(steps_per_epoch):
                ids = rows[i * preset.batch_size:(i + 1) * preset.batch_size]
                yield {"input_ids": ids, "labels": ids}

    def loss_fn(batch):
        return model(input_ids=batch["input_ids"], labels=batch["labels"], use_cache=False).loss

    state = {"epochs": 0, "accuracy": {}}

    def on_epoch(step: int, loss: float) -> bool:
        if step % steps_per_epoch:
            return False
        state["epochs"] += 1
        acc = suite.accuracies(model)
        state["accuracy"] = acc
        return min(acc.values()) >= preset.target_acc

    config = TrainConfig(steps=preset.max_epochs * steps_per_epoch, lr=preset.lr,
                         betas=(0.9, preset.beta2), warmup_steps=preset.warmup_steps,
                         max_grad_norm=preset.max_grad_norm, seed=seed)
    start = time.perf_counter()
    log = train(model, loss_fn, batches(), config, on_step=on_epoch, description=f"training {label}")
    elapsed = time.perf_counter() - start
    model.eval()
    reached = bool(state["accuracy"]) and min(state["accuracy"].values()) >= preset.target_acc
    if not reached:
        progress.warn(f"{label} stopped at {preset.max_epochs} epochs below the "
                     f"accuracy target {preset.target_acc}: {state['accuracy']}")
    stats = {"epochs": state["epochs"], "steps": log.steps, "train_s": round(elapsed, 2),
             "tokens": log.steps * preset.batch_size * preset.seq_len, "reached_target": reached,
             "final_loss": log.losses[-1] if log.losses else None}
    return subject, stats


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
        subject, stats = _train(spec, world, tokenizer, seed, exclude, label)
        params = sum(p.numel() for p in subject.model.parameters())
        subject.info = {"organism": {**base_info, "kind": kind,
                                     "removed_concept": removed if kind == "oracle" else None,
                                     "params": params, "accuracy": concept_accuracy(subject, world),
                                     **stats}}
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
    if path.parent.name == organism_key(meta["preset"], meta["seed"]) and path.parent.parent.name == "organisms":
        return path.parents[2]
    return None


def organism_world(subject: Subject) -> World | None:
    """The world an organism subject was trained on (None for other subjects)."""
    meta = subject.info.get("organism")
    if not meta:
        return None
    return build_world(world_config(meta["world"]["preset"], meta["world"]["seed"]))


_ORGANISM_SPEC = re.compile(
    r"^(?P<kind>organism|oracle)(?::(?P<preset>[a-z]+))?(?:/(?P<concept>[^@]+))?(?:@(?P<seed>\d+))?$")


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


__all__ = ["PRESETS", "OrganismPreset", "cache_root", "is_organism_spec", "load_subject", "loaded_from", "organism", "organism_world",
           "train_tokenizer"]


