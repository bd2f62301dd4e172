"""SISA: exact unlearning by sharded, isolated, sliced training of the organism, aggregated.

Bourtoule et al. 2021 ("Machine Unlearning", IEEE S&P). The world's documents, grouped into
units (an entity: its sentences, bios and QA lines; a concept: its concept-level texts; see
``world/render.py: concept_units``), are split into ``S`` disjoint shards, each shard into ``R``
disjoint slices, by a seeded shuffle of the units: one entity's facts live in one shard and one
slice, and a concept's entities spread over the shards as a uniform random assignment spreads
them. Constituent ``i`` trains on shard ``i`` in stages (§IV-B, "slicing"): stage ``r`` trains
on slices ``1..r``, starting from the checkpoint stage ``r - 1`` saved, with the organism's
recipe (``organisms.fit``: a fresh optimiser each stage, until every concept's QA in slices
``1..r`` reaches the preset's target accuracy). With ``S = R = 1`` that is the organism's full
model, bit for bit. The subject is the ensemble of the ``S`` constituents: the mean of their
next-token probabilities (``subject/ensemble.py``; Bourtoule et al.'s averaged predictions).

Unlearning a concept removes its units: a constituent whose shard holds none of them is kept as
it is; one whose shard does is retrained from the checkpoint before the first slice that held
one (the initialisation if it is the first), on its remaining units. Each stage is a
deterministic function of its starting weights and its data, so the result *is* the SISA training
of the world without the concept. Its cost is reported as the constituent steps retrained over
the steps of training every constituent from scratch (``retrain_fraction``), and over the steps
of the monolithic oracle's training (``vs_oracle``).

Checkpoints live in the organism's cache directory (``<organism>/sisa-S<S>-R<R>-p<seed>/``):
``full/shard<i>/slice<r>`` and ``without-<concept>/shard<i>/slice<r>``; a stage whose checkpoint
exists is loaded, not trained again, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from . import progress
from .errors import UserInputError
from .organisms import build_model, cache_root, fit, get_preset, organism, organism_key
from .subject.subject import Subject, load_pretrained, set_threads
from .world import World, build_world, qa_pairs, world_config
from .world.render import concept_units

MAX_SHARDS = 64


@dataclass(frozen=True)
class SisaPlan:
    """Which units each slice of each shard holds: ``slices[i][r]`` is shard ``i``'s slice ``r``."""

    slices: tuple[tuple[frozenset[str], ...], ...]

    @property
    def shards(self) -> int:
        return len(self.slices)

    def shard_units(self, i: int) -> frozenset[str]:
        return frozenset().union(*self.slices[i])

    def first_slice_holding(self, i: int, units: frozenset[str]) -> int | None:
        """The first slice of shard ``i`` that holds any of ``units`` (None: the shard holds none)."""
        return next((r for r, held in enumerate(self.slices[i]) if held & units), None)


def sisa_plan(world: World, shards: int, slices: int, seed: int) -> SisaPlan:
    """Shards and slices of the world's units (module docstring): the entities shuffled (seeded)
    and cut into ``shards`` near-equal parts, each part into ``slices``; each concept's
    concept-level texts go to a random slice of a random shard."""
    entities = [e for c in world.concepts for e in c.entities]
    if not 1 <= shards <= MAX_SHARDS or slices < 1:
        raise UserInputError(f"SISA needs 1 <= shards <= {MAX_SHARDS} and slices >= 1 (got {shards} shards, "
                             f"{slices} slices)")
    if shards * slices > len(entities):
        raise UserInputError(f"{shards} shards x {slices} slices is more than this world's {len(entities)} "
                             "entities (each slice needs one); use fewer shards or slices")
    rng = random.Random(f"sisa-{seed}")
    rng.shuffle(entities)
    parts = [[] for _ in range(shards * slices)]
    for k, entity in enumerate(entities):  # near-equal, contiguous cuts of the shuffled list
        parts[k * shards * slices // len(entities)].append(entity)
    for c in world.concepts:
        parts[rng.randrange(shards) * slices + rng.randrange(slices)].append(c.name)
    return SisaPlan(tuple(tuple(frozenset(parts[i * slices + r]) for r in range(slices)) for i in range(shards)))


def stage_data(world: World, units: frozenset[str]) -> tuple[list[str], dict[str, list]]:
    """The documents of ``units`` in the world's corpus order, and per concept the QA of its
    entities among them (what :func:`~unlearn_audit.organisms.fit` checks)."""
    docs = [doc for c in world.concepts for unit, unit_docs in concept_units(world, c.name) if unit in units
            for doc in unit_docs]
    checked = {c.name: [q for e in c.entities if e in units for q in qa_pairs(world.entities[e])]
               for c in world.concepts}
    return docs, {name: qa for name, qa in checked.items() if qa}


def sisa_dir(preset: str, seed: int, shards: int, slices: int, plan_seed: int,
             cache_dir: str | os.PathLike | None = None) -> Path:
    return cache_root(cache_dir) / "organisms" / organism_key(preset, seed) / f"sisa-S{shards}-R{slices}-p{plan_seed}"


def _stages(spec, tokenizer, world: World, seed: int, i: int, plan: SisaPlan, removed: frozenset[str],
            first: int, start: Subject | None, where: Path, label: str) -> tuple[Subject, int]:
    """Constituent ``i``'s stages ``first..R-1`` without ``removed``, from ``start`` (None: the
    initialisation); each loaded from ``where/slice<r>`` when saved there, else trained and saved.
    Returns the last stage and the steps its stages took."""
    subject = start or Subject(build_model(spec, tokenizer, seed + i), tokenizer, label, answer_eos=True)
    steps = 0
    for r in range(first, len(plan.slices[i])):
        path = where / f"slice{r}"
        if (path / "model.safetensors").is_file():
            subject = load_pretrained(path, device="cpu")
        else:
            units = frozenset().union(*plan.slices[i][:r + 1]) - removed
            docs, checked = stage_data(world, units)
            name = f"{label} shard {i + 1}/{plan.shards} slice {r + 1}/{len(plan.slices[i])}"
            subject.name = name
            stats = fit(subject, spec, docs, checked, seed + i + 7919 * r, name) if docs else \
                {"epochs": 0, "steps": 0, "reached_target": True}
            subject.info = {"sisa_stage": {"shard": i, "slice": r, "units": sorted(units), "documents": len(docs),
                                           **stats}}
            subject.save(path)
        steps += subject.info["sisa_stage"]["steps"]
    return subject, steps


def sisa(preset: str = "default", seed: int = 0, shards: int = 4, slices: int = 1, concept: str | None = None, *,
         plan_seed: int = 0, cache_dir: str | os.PathLike | None = None, threads: int | None = None) -> Subject:
    """The SISA ensemble of organism ``preset``: trained on the whole world (``concept`` None),
    or after unlearning ``concept`` (name or index) by retraining what held it (module docstring).

    Returns a subject whose model is an :class:`~unlearn_audit.subject.ensemble.EnsembleForCausalLM`
    and whose ``info["sisa"]`` holds the plan, each constituent's steps, which were retrained
    and the cost."""
    from .subject.ensemble import EnsembleForCausalLM

    spec = get_preset(preset)
    if spec.dp_epsilon is not None:
        raise UserInputError(f"{preset}: SISA trains ordinary organisms; give a preset without -dp")
    world = build_world(world_config(spec.world, seed))
    plan = sisa_plan(world, shards, slices, plan_seed)  # bad counts fail here, before any training
    full, oracle = organism(preset, seed, concept, cache_dir=cache_dir, threads=threads)
    set_threads(threads)
    root = sisa_dir(preset, seed, shards, slices, plan_seed, cache_dir)
    label = f"sisa:{preset}@{seed}"
    members, steps_full, retrained = [], [], {}
    removed_name = world.resolve_concept(concept).name if concept is not None else None
    removed = frozenset() if concept is None else \
        frozenset({removed_name, *world.concept(removed_name).entities})
    with progress.bar(f"SISA constituents ({shards} x {slices} slices)", shards) as bar:
        for i in range(shards):
            member, steps = _stages(spec, full.tokenizer, world, seed, i, plan, frozenset(), 0, None,
                                    root / "full" / f"shard{i}", label)
            steps_full.append(steps)
            first = plan.first_slice_holding(i, removed) if removed else None
            if first is not None:
                start = None if first == 0 else load_pretrained(root / "full" / f"shard{i}" / f"slice{first - 1}",
                                                                device="cpu")
                member, retrained[i] = _stages(spec, full.tokenizer, world, seed, i, plan, removed, first, start,
                                               root / f"without-{removed_name}" / f"shard{i}", label)
            members.append(member.model)
            bar.advance()
    info = {"shards": shards, "slices": slices, "plan_seed": plan_seed,
            "plan": [[sorted(s) for s in shard] for shard in plan.slices],
            "constituent_steps": steps_full, "removed_concept": removed_name,
            "retrained": {str(i): {"from_slice": plan.first_slice_holding(i, removed), "steps": n}
                          for i, n in retrained.items()}}
    if removed_name is not None:
        done = sum(retrained.values())
        info["retrain_steps"] = done
        info["retrain_fraction"] = done / max(1, sum(steps_full))
        info["vs_oracle"] = done / max(1, oracle.info["organism"]["steps"])
    name = label + (f"-{removed_name}" if removed_name else "") + f" (S={shards}, R={slices})"
    ensemble = Subject(EnsembleForCausalLM.of(members), full.tokenizer, name, full.prompt_template, True,
                       {"sisa": info})
    return ensemble

