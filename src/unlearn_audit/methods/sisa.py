"""``sisa``: exact unlearning by retraining only the SISA constituents that saw the concept.

Bourtoule et al. 2021 ("Machine Unlearning"); the training, the plan and the cost are in
:mod:`unlearn_audit.sisa`. Like ``retrain`` it needs the built-in organism and a
``world:<concept>`` target: the method replaces the organism by its SISA ensemble (``shards``
constituents, each trained in ``slices`` stages, trained and cached on first use) with the
concept unlearned, so its row answers what an attack brings back from an exactly unlearned
*ensemble*, and at what utility (the ensemble's accuracy on the other concepts) and compute
(``retrain_fraction``: constituent steps retrained / steps of training all constituents;
``vs_oracle``: / steps of training the monolithic oracle) it was bought. Attacks that read one
set of internals report ``null`` with ``"not_applicable": "ensemble"``.
"""

from __future__ import annotations

from pydantic import Field

from ..errors import UserInputError
from ..params import MAX_SEED
from ..subject import residency
from .base import Method, MethodParams, register_method


class SisaParams(MethodParams):
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seeds the assignment of entities to shards and slices.")
    shards: int = Field(4, ge=1, le=64, description="Constituent models S (disjoint shards of the world's entities).")
    slices: int = Field(1, ge=1, le=64, description="Slices R per shard (a checkpoint after each).")


@register_method("sisa")
class Sisa(Method):
    kind = "transform"
    Params = SisaParams

    def apply(self, out, subject, target, params):
        from ..organisms import loaded_from
        from ..sisa import sisa

        meta = subject.info.get("organism")
        concept = target.source.get("concept")
        if not meta or meta.get("kind") != "full" or "preset" not in meta or concept is None:
            raise UserInputError("sisa needs the built-in organism (organism:<preset>) and a world:<concept> target: "
                                 "it retrains the organism's shards without the concept")
        ensemble = sisa(meta["preset"], meta["seed"], params.shards, params.slices, concept,
                        plan_seed=params.seed, cache_dir=loaded_from(subject))
        out.model = ensemble.model.to(subject.device)
        residency.track(out.model)
        details = ensemble.info["sisa"]
        return {k: details[k] for k in ("retrain_steps", "retrain_fraction", "vs_oracle", "constituent_steps",
                                        "retrained")}
