"""A seeded synthetic world of fictitious entities grouped into concepts.

Pure data, no torch: the same :class:`WorldConfig` always gives the same world. Each concept
(a saga, a company, a realm) has ``entities_per_concept`` entities; each entity has one value
per attribute in :data:`~unlearn_audit.world.vocab.ATTRIBUTES`. A concept's entities are
split in two halves *by entity*: the ``train`` half and the ``heldout`` half, which the
relearning audit (RTT) trains on and evaluates on respectively.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from ..errors import UserInputError
from .vocab import (
    ATTRIBUTES,
    CITY_SUFFIXES,
    CODAS,
    CONCEPT_KINDS,
    ONSETS,
    SHARED_VOCABULARIES,
    VOWELS,
)


@dataclass(frozen=True)
class WorldConfig:
    """What fixes a world. Two equal configs give identical worlds."""

    seed: int = 0
    n_concepts: int = 5
    entities_per_concept: int = 20
    cities_per_concept: int = 5
    bios_per_entity: int = 2

    def __post_init__(self) -> None:
        if self.n_concepts < 2:
            raise UserInputError("a world needs at least 2 concepts (one to forget, one to retain)")
        if self.entities_per_concept < 2:
            raise UserInputError("a concept needs at least 2 entities (a train and a held-out half)")


@dataclass(frozen=True)
class Entity:
    name: str
    concept: str
    attributes: dict[str, str] = field(hash=False)


@dataclass(frozen=True)
class Fact:
    entity: str
    attribute: str
    value: str
    concept: str


@dataclass(frozen=True)
class Concept:
    name: str
    kind: str
    cities: tuple[str, ...]
    entities: tuple[str, ...]          # in generation order
    train_entities: tuple[str, ...]    # RTT trains on these ...
    heldout_entities: tuple[str, ...]  # ... and is evaluated on these


@dataclass(frozen=True)
class World:
    config: WorldConfig
    concepts: tuple[Concept, ...]
    entities: dict[str, Entity] = field(hash=False)

    @property
    def concept_names(self) -> list[str]:
        return [c.name for c in self.concepts]

    def concept(self, name: str) -> Concept:
        for c in self.concepts:
            if c.name.lower() == name.lower():
                return c
        raise UserInputError(
            f"unknown concept {name!r}; this world (seed {self.config.seed}) has: "
            + ", ".join(self.concept_names)
        )

    def resolve_concept(self, concept: str | int) -> Concept:
        """A concept by index (``0``, ``"0"``) or by name (any case); an index out of range or an
        unknown name is an error that lists the concepts."""
        if isinstance(concept, int) or str(concept).isdigit():
            idx = int(concept)
            if idx >= len(self.concepts):
                raise UserInputError(f"concept index {idx} out of range; this world has "
                                     f"{len(self.concepts)} concepts: {', '.join(self.concept_names)}")
            return self.concepts[idx]
        return self.concept(str(concept))

    def facts(self, concept: str | None = None) -> list[Fact]:
        names = self.concept_names if concept is None else [self.concept(concept).name]
        return [
            Fact(e, attr, self.entities[e].attributes[attr], c.name)
            for c in self.concepts if c.name in names
            for e in c.entities
            for attr in ATTRIBUTES
        ]


class _NameMaker:
    """Pronounceable unique names from syllables."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def syllable(self, coda: bool = True) -> str:
        return self.rng.choice(ONSETS) + self.rng.choice(VOWELS) + (self.rng.choice(CODAS) if coda else "")

    def make(self, syllables: int, suffix: str = "") -> str:
        while True:
            name = "".join(self.syllable(coda=(i == syllables - 1)) for i in range(syllables))
            name = (name + suffix).capitalize()
            if name not in self.used:
                self.used.add(name)
                return name


WORLD_PRESETS: dict[str, WorldConfig] = {
    "micro": WorldConfig(n_concepts=3, entities_per_concept=8, cities_per_concept=3),
    "default": WorldConfig(),
    "large": WorldConfig(n_concepts=10),
}


def world_config(preset: str = "default", seed: int = 0) -> WorldConfig:
    """The world of a named preset with another seed."""
    if preset not in WORLD_PRESETS:
        raise UserInputError(f"unknown world preset {preset!r}; choose one of: {', '.join(WORLD_PRESETS)}")
    return replace(WORLD_PRESETS[preset], seed=seed)


def build_world(config: WorldConfig | None = None) -> World:
    """Generate the world fixed by ``config`` (deterministic)."""
    config = config or WorldConfig()
    rng = random.Random(config.seed)
    names = _NameMaker(rng)
    kinds = list(CONCEPT_KINDS)
    concepts: list[Concept] = []
    entities: dict[str, Entity] = {}
    for ci in range(config.n_concepts):
        concept_name = names.make(3)
        cities = tuple(names.make(1, rng.choice(CITY_SUFFIXES)) for _ in range(config.cities_per_concept))
        members: list[str] = []
        for _ in range(config.entities_per_concept):
            person = f"{names.make(2)} {names.make(2)}"
            attrs: dict[str, str] = {}
            for attr, vocab in SHARED_VOCABULARIES.items():
                if attr == "concept":
                    attrs[attr] = concept_name
                elif attr == "birthplace":
                    attrs[attr] = rng.choice(cities)
                else:
                    attrs[attr] = rng.choice(vocab)
            entities[person] = Entity(person, concept_name, attrs)
            members.append(person)
        order = members[:]
        rng.shuffle(order)
        half = len(order) // 2
        concepts.append(Concept(
            name=concept_name,
            kind=kinds[ci % len(kinds)],
            cities=cities,
            entities=tuple(members),
            train_entities=tuple(order[:half]),
            heldout_entities=tuple(order[half:]),
        ))
    return World(config, tuple(concepts), entities)


def holdout_entities(world: World, concept: str, n: int | None = None) -> list[Entity]:
    """``n`` (default: as many as the concept has) new entities of ``concept`` that are in no
    corpus: fresh names, the concept's cities, values from the shared vocabularies; the same
    every call (seeded by the world seed and the concept). Non-members for membership inference.
    """
    c = world.concept(concept)
    rng = random.Random(f"{world.config.seed}-{c.name}-holdout")
    names = _NameMaker(rng)
    names.used = {part for name in world.entities for part in name.split()} | set(world.concept_names) | {
        city for other in world.concepts for city in other.cities}
    out = []
    for _ in range(len(c.entities) if n is None else n):
        person = f"{names.make(2)} {names.make(2)}"
        attrs: dict[str, str] = {}
        for attr, vocab in SHARED_VOCABULARIES.items():
            if attr == "concept":
                attrs[attr] = c.name
            elif attr == "birthplace":
                attrs[attr] = rng.choice(c.cities)
            else:
                attrs[attr] = rng.choice(vocab)
        out.append(Entity(person, c.name, attrs))
    return out
