"""Targets: what one unlearning request is about.

A :class:`Target` holds the forget set (texts and QA about the concept), the retain set (texts
and QA the method may use to stay intact), unrelated QA (never seen by the method; measures
collateral damage) and extra evaluation-only sets (paraphrased questions, sentence
completions).

The forget QA is split in two halves: ``forget_qa`` and ``forget_heldout_qa``. Unlearning
methods see both halves; the relearning attack RTT (Deeb & Roger 2024) fine-tunes on
``forget_qa`` and evaluates on ``forget_heldout_qa``.

Targets come from the built-in world (``world:<concept>[@<seed>]``, or
``world:<preset>/<concept>[@<seed>]``) or from a directory of JSONL files:

- ``forget.jsonl`` (required): lines ``{"text": ...}`` or ``{"question": ..., "answer": ...}``;
- ``retain.jsonl`` (required): same;
- ``forget_heldout.jsonl`` (optional): QA; otherwise a seeded half of the forget QA;
- ``unrelated.jsonl`` (optional): QA (and text, used for perplexity);
- ``holdout.jsonl`` (optional): texts like the forget texts that no model was trained on (the
  non-members of the membership-inference attack ``mia``);
- any other ``<name>.jsonl``: an extra evaluation set of QA lines (a line may carry
  ``"kind": "completion"`` for a raw prefix -> continuation item);
- ``target.json`` (optional): ``{"name": ...}``.

The field's benchmarks load as targets too: ``tofu:<split>``, ``wmdp:<domain>``,
``muse:<corpus>`` (optionally ``@DIR``, a local copy), see :mod:`unlearn_audit.data.benchmarks`;
their benchmark-specific items (perturbed answers, multiple choices, ...) are in
``target.benchmark``.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserInputError
from ..files import is_text, read_json, read_text, write_text_atomic
from ..world import QA, World, build_world, holdout_entities, world_config
from ..world.render import bios as render_bios
from ..world.render import completions, concept_texts, qa_pairs, sentences
from .benchmarks.items import BenchmarkData

KNOWN_FILES = ("forget", "retain", "forget_heldout", "unrelated", "holdout")


@dataclass
class Target:
    name: str
    forget_text: list[str]
    forget_qa: list[QA]
    forget_heldout_qa: list[QA]
    retain_text: list[str]
    retain_qa: list[QA]
    unrelated_qa: list[QA] = field(default_factory=list)
    unrelated_text: list[str] = field(default_factory=list)
    extra_eval: dict[str, list[QA]] = field(default_factory=dict)
    holdout_text: list[str] = field(default_factory=list)  # forget-like texts no model saw (MIA non-members)
    # where it came from: {"world": {...config...}, "concept": name} or {"path": dir}
    source: dict = field(default_factory=dict)
    # TOFU/WMDP/MUSE items no QA pair can hold (perturbed answers, choices, ...); None otherwise
    benchmark: BenchmarkData | None = None

    def eval_sets(self) -> dict[str, list[QA]]:
        """Every QA set to evaluate, by name. Headline sets first."""
        sets = {
            "forget": self.forget_qa,
            "forget_heldout": self.forget_heldout_qa,
            "retain": self.retain_qa,
            "unrelated": self.unrelated_qa,
        }
        sets.update(self.extra_eval)
        return {k: v for k, v in sets.items() if v}

    @property
    def all_forget_qa(self) -> list[QA]:
        return self.forget_qa + self.forget_heldout_qa

    def summary(self) -> dict[str, int]:
        return {
            "forget_text": len(self.forget_text),
            "forget_qa": len(self.forget_qa),
            "forget_heldout_qa": len(self.forget_heldout_qa),
            "retain_text": len(self.retain_text),
            "retain_qa": len(self.retain_qa),
            "unrelated_qa": len(self.unrelated_qa),
            "holdout_text": len(self.holdout_text),
            **{k: len(v) for k, v in self.extra_eval.items()},
            **(self.benchmark.summary() if self.benchmark else {}),
        }


# ----------------------------------------------------------------------------- world targets

def world_target(world: World, concept: str) -> Target:
    """The target for forgetting one concept of the built-in world.

    forget: every text about the concept (sentences, bios, concept text) and its QA, split by
    entity into the RTT train half and held-out half. retain: texts and QA about the *train*
    half of every other concept; unrelated: QA about the *held-out* half of every other concept
    (never shown to a method). Extra sets: the evaluation-only question phrasing and sentence
    completions, for forget and unrelated entities. Holdout texts: the sentences and bios of as
    many new entities of the concept as it has, in no corpus (:func:`holdout_entities`).
    """
    c = world.concept(concept)
    ents = world.entities
    rng = random.Random(f"{world.config.seed}-{c.name}-bios")
    forget_text = list(concept_texts(c))
    for name in c.entities:
        forget_text += sentences(ents[name]) + render_bios(ents[name], world.config.bios_per_entity, rng)
    others = [o for o in world.concepts if o.name != c.name]
    retain_entities = [e for o in others for e in o.train_entities]
    unrelated_entities = [e for o in others for e in o.heldout_entities]

    def qa(names, phrasing="train"):
        return [q for n in names for q in qa_pairs(ents[n], phrasing)]

    def comp(names):
        return [q for n in names for q in completions(ents[n])]

    forget_entities = list(c.train_entities) + list(c.heldout_entities)
    holdout_rng = random.Random(f"{world.config.seed}-{c.name}-holdout-bios")
    holdout = [t for e in holdout_entities(world, c.name)
               for t in sentences(e) + render_bios(e, world.config.bios_per_entity, holdout_rng)]
    return Target(
        name=c.name,
        forget_text=forget_text,
        forget_qa=qa(c.train_entities),
        forget_heldout_qa=qa(c.heldout_entities),
        retain_text=[s for n in retain_entities for s in sentences(ents[n])],
        retain_qa=qa(retain_entities),
        unrelated_qa=qa(unrelated_entities),
        unrelated_text=[s for n in unrelated_entities for s in sentences(ents[n])],
        extra_eval={
            "forget_paraphrase": qa(forget_entities, "eval"),
            "forget_completion": comp(forget_entities),
            "unrelated_paraphrase": qa(unrelated_entities, "eval"),
            "unrelated_completion": comp(unrelated_entities),
        },
        source={"world": {"seed": world.config.seed, "n_concepts": world.config.n_concepts,
                          "entities_per_concept": world.config.entities_per_concept},
                "concept": c.name},
        holdout_text=holdout,
    )


_WORLD_SPEC = re.compile(r"^world:(?:(?P<preset>[a-z]+)/)?(?P<concept>[^@/]+)(?:@(?P<seed>-?\d+))?$")


def parse_world_spec(spec: str) -> tuple[str | None, str, int | None]:
    """``world:[<preset>/]<concept>[@<seed>]`` -> (preset or None, concept, seed or None)."""
    m = _WORLD_SPEC.match(spec)
    if not m:
        raise UserInputError(
            f"bad target {spec!r}; write world:<concept>, world:<concept>@<seed>, "
            "world:<preset>/<concept> or a directory holding forget.jsonl and retain.jsonl"
        )
    seed = m.group("seed")
    return m.group("preset"), m.group("concept"), None if seed is None else int(seed)


def load_target(spec: str | os.PathLike, *, world: World | None = None, seed: int = 0) -> Target:
    """Load a target from a ``world:`` spec or a directory of JSONL files.

    Args:
        spec: ``world:<concept>[@<seed>]``, ``world:<preset>/<concept>[@<seed>]`` (a concept may
            also be given by its index, ``world:0``), a benchmark (``tofu:forget10[@DIR]``,
            ``wmdp:bio[@DIR]``, ``muse:news[@DIR]``) or a target directory.
        world: the world to use for a ``world:`` spec that names no preset and no seed (the CLI
            passes the organism's own world here); defaults to the default preset, seed 0.
        seed: seeds the forget/held-out split of a directory without ``forget_heldout.jsonl``
            and of a benchmark.
    """
    spec_s = str(spec)
    if spec_s.startswith("world:"):
        preset, concept, wseed = parse_world_spec(spec_s)
        if world is None or preset is not None or wseed is not None:
            world = build_world(world_config(preset or "default", wseed or 0))
        return world_target(world, world.resolve_concept(concept).name)
    from .benchmarks import is_benchmark_spec, load_benchmark

    if is_benchmark_spec(spec_s):
        return load_benchmark(spec_s, seed)
    return _load_target_dir(Path(spec_s), seed)


# ----------------------------------------------------------------------------- JSONL targets

def _read_jsonl(path: Path) -> tuple[list[str], list[QA]]:
    texts: list[str] = []
    qas: list[QA] = []
    # one read: bad bytes and unreadable paths are one-line errors (files.read_text); split on
    # newlines only (a JSON string may hold U+2028, which str.splitlines would split on)
    for i, line in enumerate(read_text(path, "target file").split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            why = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply"
            raise UserInputError(f"{path} line {i}: not valid JSON ({why}); "
                                 "each line must be one JSON object") from None
        fields = [row.get(k) for k in ("text", "question", "answer")] if isinstance(row, dict) else []
        if any(isinstance(v, str) and not is_text(v) for v in fields):
            raise UserInputError(f"{path} line {i}: holds a lone surrogate (\\ud800-\\udfff), not text")
        if isinstance(row, dict) and isinstance(row.get("text"), str):
            texts.append(row["text"])
        elif (isinstance(row, dict) and isinstance(row.get("question"), str)
              and isinstance(row.get("answer"), str) and row["answer"].strip()):
            kind = row.get("kind", "qa")
            if kind not in ("qa", "completion"):
                raise UserInputError(f"{path} line {i}: kind must be 'qa' or 'completion', not {kind!r}")
            qas.append(QA(row["question"], row["answer"].strip(), kind))
        else:
            raise UserInputError(f"{path} line {i}: expected {{\"text\": ...}} or "
                                 "{\"question\": ..., \"answer\": ...} with a non-empty answer")
    return texts, qas


def _load_target_dir(path: Path, seed: int) -> Target:
    if not path.is_dir():
        raise UserInputError(f"target {str(path)!r} is neither world:<concept> nor a directory; "
                             "a target directory holds forget.jsonl and retain.jsonl")
    for required in ("forget", "retain"):
        if not (path / f"{required}.jsonl").is_file():
            raise UserInputError(f"target directory {path} has no {required}.jsonl; it needs "
                                 "forget.jsonl and retain.jsonl (see `unlearn-audit world export`)")
    forget_text, forget_qa = _read_jsonl(path / "forget.jsonl")
    retain_text, retain_qa = _read_jsonl(path / "retain.jsonl")
    if (path / "forget_heldout.jsonl").is_file():
        heldout_text, heldout_qa = _read_jsonl(path / "forget_heldout.jsonl")
        forget_text += heldout_text
    else:
        order = list(range(len(forget_qa)))
        random.Random(seed).shuffle(order)
        held = set(order[: len(order) // 2])
        heldout_qa = [q for i, q in enumerate(forget_qa) if i in held]
        forget_qa = [q for i, q in enumerate(forget_qa) if i not in held]
    if not forget_qa or not heldout_qa:
        raise UserInputError(f"{path}/forget.jsonl needs at least 2 question/answer lines "
                             "(one to relearn on, one held out)")
    if not retain_text and not retain_qa:
        raise UserInputError(f"{path}/retain.jsonl is empty; give the texts or QA to keep")
    unrelated_text, unrelated_qa = ([], [])
    if (path / "unrelated.jsonl").is_file():
        unrelated_text, unrelated_qa = _read_jsonl(path / "unrelated.jsonl")
    holdout_text = _read_jsonl(path / "holdout.jsonl")[0] if (path / "holdout.jsonl").is_file() else []
    extra = {}
    for f in sorted(path.glob("*.jsonl")):
        if f.stem not in KNOWN_FILES:
            _, items = _read_jsonl(f)
            if items:
                extra[f.stem] = items
    name = path.name
    if (path / "target.json").is_file():
        meta = read_json(path / "target.json", "target file")
        if not isinstance(meta, dict) or not isinstance(meta.get("name", name), str) or not meta.get("name", name).strip():
            raise UserInputError(f"{path}/target.json must be a JSON object like {{\"name\": ...}} with a non-empty name")
        name = meta.get("name", name)
    return Target(name, forget_text, forget_qa, heldout_qa, retain_text, retain_qa,
                  unrelated_qa, unrelated_text, extra, holdout_text, {"path": str(path.resolve())})


def write_jsonl(path: Path, texts: list[str], qas: list[QA]) -> None:
    """Write texts then QA lines, atomically."""
    write_text_atomic(path, "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)
                      + "".join(json.dumps(q.to_json(), ensure_ascii=False) + "\n" for q in qas))


def save_target(target: Target, out: Path) -> None:
    """Write a target in the directory layout that :func:`load_target` reads."""
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "forget.jsonl", target.forget_text, target.forget_qa)
    write_jsonl(out / "forget_heldout.jsonl", [], target.forget_heldout_qa)
    write_jsonl(out / "retain.jsonl", target.retain_text, target.retain_qa)
    write_jsonl(out / "unrelated.jsonl", target.unrelated_text, target.unrelated_qa)
    if target.holdout_text:
        write_jsonl(out / "holdout.jsonl", target.holdout_text, [])
    for name, items in target.extra_eval.items():
        write_jsonl(out / f"{name}.jsonl", [], items)
    write_text_atomic(out / "target.json", json.dumps({"name": target.name, **target.source}, indent=2) + "\n")
