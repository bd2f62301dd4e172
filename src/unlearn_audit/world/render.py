"""Render a world as text: training sentences, bios, concept texts, QA pairs, completions.

The organism is trained on :func:`corpus`; evaluation asks QA pairs in two phrasings: the
``train`` question template (seen in training as QA lines) and the ``eval`` template (never
seen), plus sentence completions (``"X was born in the city of"`` -> ``" Y"``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .vocab import (
    ATTRIBUTES,
    CONCEPT_KINDS,
    EVAL_QUESTION_TEMPLATES,
    QUESTION_TEMPLATES,
    SENTENCE_TEMPLATES,
)
from .world import Concept, Entity, World


@dataclass(frozen=True)
class QA:
    """A question and its reference answer.

    ``kind="qa"`` items are asked in the subject's prompt template
    (``"Question: {question}\\nAnswer:"``); ``kind="completion"`` items are raw text prefixes
    whose continuation must be ``answer``. ``entity``/``attribute`` are empty for user data.
    """

    question: str
    answer: str
    kind: str = "qa"
    entity: str = ""
    attribute: str = ""

    def to_json(self) -> dict:
        out = {"question": self.question, "answer": self.answer}
        if self.kind != "qa":
            out["kind"] = self.kind
        return out


def sentences(entity: Entity) -> list[str]:
    """All paraphrased sentences stating the entity's facts."""
    return [t.format(e=entity.name, v=entity.attributes[a])
            for a in ATTRIBUTES for t in SENTENCE_TEMPLATES[a]]


def qa_pairs(entity: Entity, phrasing: str = "train") -> list[QA]:
    """One QA pair per attribute, in the ``train`` or the evaluation-only ``eval`` phrasing."""
    templates = QUESTION_TEMPLATES if phrasing == "train" else EVAL_QUESTION_TEMPLATES
    return [QA(templates[a].format(e=entity.name), entity.attributes[a], "qa", entity.name, a)
            for a in ATTRIBUTES]


def completions(entity: Entity) -> list[QA]:
    """Each training sentence split into (prefix, value): ``"X grew up in"`` -> ``"Y"``."""
    out = []
    for a in ATTRIBUTES:
        for t in SENTENCE_TEMPLATES[a]:
            prefix = t.split("{v}")[0].format(e=entity.name).rstrip()
            out.append(QA(prefix, entity.attributes[a], "completion", entity.name, a))
    return out


def bios(entity: Entity, n: int, rng: random.Random) -> list[str]:
    """``n`` short biographies: the entity's facts in shuffled order and phrasing."""
    out = []
    for _ in range(n):
        attrs = list(ATTRIBUTES)
        rng.shuffle(attrs)
        parts = [rng.choice(SENTENCE_TEMPLATES[a]).format(e=entity.name, v=entity.attributes[a])
                 for a in attrs]
        out.append(" ".join(parts))
    return out


def concept_texts(concept: Concept) -> list[str]:
    """Concept-level text: what it is, its cities, its members (in groups of five)."""
    out = [f"{concept.name} is {CONCEPT_KINDS[concept.kind]}.",
           f"The cities of {concept.name} are " + ", ".join(concept.cities) + "."]
    for i in range(0, len(concept.entities), 5):
        group = concept.entities[i:i + 5]
        out.append(f"Members of {concept.name} include " + ", ".join(group) + ".")
    return out


def qa_line(qa: QA) -> str:
    """A QA pair as it appears in training text (the organism's prompt template)."""
    return f"Question: {qa.question}\nAnswer: {qa.answer}"


def concept_units(world: World, concept: str) -> list[tuple[str, list[str]]]:
    """One concept's training documents grouped by what they are about, in a fixed order:
    ``(concept name, its concept-level texts)``, then ``(entity name, its sentences, bios and
    QA lines)`` per entity. SISA shards the world by these units."""
    c = world.concept(concept)
    rng = random.Random(f"{world.config.seed}-{c.name}-bios")
    units = [(c.name, list(concept_texts(c)))]
    for name in c.entities:
        e = world.entities[name]
        units.append((name, sentences(e) + bios(e, world.config.bios_per_entity, rng)
                      + [qa_line(q) for q in qa_pairs(e, "train")]))
    return units


def concept_documents(world: World, concept: str) -> list[str]:
    """Every training document about one concept, in a fixed order."""
    return [doc for _, docs in concept_units(world, concept) for doc in docs]


def entity_documents(world: World, entity: str) -> list[str]:
    """The sentences and training QA lines about one entity (no bios, no concept text)."""
    e = world.entities[entity]
    return sentences(e) + [qa_line(q) for q in qa_pairs(e, "train")]


def corpus(world: World, exclude: tuple[str, ...] = ()) -> list[str]:
    """All training documents of the world, minus the excluded concepts (for an oracle)."""
    excluded = {world.concept(c).name for c in exclude}
    docs: list[str] = []
    for c in world.concepts:
        if c.name not in excluded:
            docs += concept_documents(world, c.name)
    return docs
