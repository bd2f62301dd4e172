"""Attacks on unlearned subjects, one file each, registered by attack name."""

from __future__ import annotations

from .base import (
         ATTACKS,
         Attack,
         AttackParams,
         attack_fields,
         attack_names,
         get_attack,
         register_attack,
)

# the order attacks are listed in (``attacks``, ``--attacks all``); a module missing here is still
# found (the registry imports every module of this package), it is only listed last
ORDER = ("relearn", "patching", "logit_lens", "ablation", "probe", "concept_vectors", "in_context", "quantize",
         "mia", "weight_distance")


__all__ = ["ATTACKS", "ORDER", "Attack", "AttackParams", "attack_fields", "attack_names", "get_attack", "register_attack"]
