"""Synthetic knowledge world: entities, facts, concepts, QA and corpora (pure, seeded)."""

from .render import QA, completions, concept_documents, corpus, qa_pairs, sentences
from .world import (
           WORLD_PRESETS,
           Concept,
           Entity,
           Fact,
           World,
           WorldConfig,
           build_world,
           holdout_entities,
           world_config,
)

__all__ = ["QA", "Concept", "Entity", "Fact", "World", "WorldConfig", "build_world", "holdout_entities", "world_config", "WORLD_PRESETS",
           "completions", "concept_documents", "corpus", "qa_pairs", "sentences"]
