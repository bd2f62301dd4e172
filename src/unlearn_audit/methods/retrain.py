"""``retrain``: exact unlearning, i.e. the same model trained from scratch without the concept.

Only the built-in organism, or the world fine-tuned into a base model (``organism train
--base``), can be retrained here (their recipe and data are known); the result is their oracle
for the target's concept (trained and cached on first use). It is the
gold standard row of every table: an attack on it measures what the attack teaches a model
that never knew the concept.
"""

from __future__ import annotations

from ..errors import UserInputError
from .base import Method, MethodParams, register_method


@register_method("retrain")
class Retrain(Method):
    kind = "transform"
    Params = MethodParams

    def apply(self, out, subject, target, params):
        from ..organisms import BaseRecipe, based_organism, loaded_from, organism

        meta = subject.info.get("organism")
        concept = target.source.get("concept")
        if not meta or meta.get("kind") != "full" or concept is None:
            raise UserInputError("retrain needs the built-in organism (organism:<preset>, or a base model trained "
                                 "with organism train --base) and a world:<concept> "
                                 "target: other models cannot be retrained without the concept here")
        if "base" in meta:
            _, oracle = based_organism(meta["base"], meta["seed"], concept, recipe=BaseRecipe(**meta["recipe"]),
                                       cache_dir=loaded_from(subject), device=str(subject.device),
                                       revision=meta.get("revision"))
        else:
            _, oracle = organism(meta["preset"], meta["seed"], concept=concept, cache_dir=loaded_from(subject))
        out.model.load_state_dict(oracle.model.state_dict())  # the copy becomes the oracle, bit for bit
        out.info = {**oracle.info}
        return None
