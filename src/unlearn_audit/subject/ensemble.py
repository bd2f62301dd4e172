"""An ensemble of causal LMs as one ``PreTrainedModel``: SISA's aggregate (``unlearn_audit.sisa``).

Bourtoule et al. 2021 ("Machine Unlearning", §IV-C) aggregate constituents by averaging their
predicted probability vectors. For a language model the prediction is the next-token
distribution, so the ensemble's is the mixture

    p(x_t | x_<t) = (1/S) * sum_i p_i(x_t | x_<t),  i.e.  log p = logsumexp_i(log p_i) - log S

(the mean of the constituents' *probabilities*: a mean of log-probabilities is not a
distribution). ``forward`` returns these log-probabilities as the logits (a log-softmax of them
gives them back), so every behavioural metric, relearning attack, ``in_context``, ``mia`` and
``quantize`` treat the ensemble as one model; a relearning attack fine-tunes every constituent
through the mixture. Attacks that read one set of internals (``patching``, ``probe``, ...) do not
apply (``Attack.needs_internals``). Registered with the Auto classes, so ``save_pretrained`` and
``from_pretrained`` round-trip it like any model.
"""

from __future__ import annotations

import math

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

MODEL_TYPE = "unlearn_audit_ensemble"


class EnsembleConfig(PretrainedConfig):
    """``member``: the constituents' config (a dict, as ``to_dict`` writes it); ``n_members``: S."""

    model_type = MODEL_TYPE

    def __init__(self, member: dict | None = None, n_members: int = 1, **kwargs):
        self.member = dict(member or {})
        self.n_members = n_members
        # what callers read of a model's config (context length, vocabulary, special tokens)
        for key in ("max_position_embeddings", "vocab_size", "hidden_size", "num_hidden_layers"):
            if key in self.member:
                kwargs.setdefault(key, self.member[key])
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            kwargs.setdefault(key, self.member.get(key))
        kwargs.setdefault("use_cache", False)
        super().__init__(**kwargs)

    def member_config(self) -> PretrainedConfig:
        fields = dict(self.member)
        return AutoConfig.for_model(fields.pop("model_type"), **fields)


class EnsembleForCausalLM(PreTrainedModel, GenerationMixin):
    """S causal LMs of one shape whose next-token distributions are averaged (module docstring)."""

    config_class = EnsembleConfig
    base_model_prefix = "members"
    _supports_cache_class = False

    def __init__(self, config: EnsembleConfig):
        super().__init__(config)
        member = config.member_config()
        self.members = torch.nn.ModuleList(AutoModelForCausalLM.from_config(member) for _ in range(config.n_members))
        self.generation_config.use_cache = False  # the mixture keeps no KV cache: each step reads the whole prefix
        self.post_init()
        # post_init gathers tied weights from direct children only, and a ModuleList has none: the
        # members' own (tied embeddings), so that saving writes one copy and loading re-ties it
        self.all_tied_weights_keys = {f"members.{i}.{k}": f"members.{i}.{v}" for i, m in enumerate(self.members)
                                      for k, v in (getattr(m, "all_tied_weights_keys", None) or {}).items()}

    @classmethod
    def of(cls, members: list[PreTrainedModel]) -> EnsembleForCausalLM:
        """The ensemble of ``members`` (their modules, not copies)."""
        config = EnsembleConfig(member=members[0].config.to_dict(), n_members=len(members))
        model = cls(config)
        model.members = torch.nn.ModuleList(members)
        return model.to(next(members[0].parameters()).dtype)

    def get_input_embeddings(self):  # what resize and peft look for; the first member's
        return self.members[0].get_input_embeddings()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, labels=None, inputs_embeds=None,
                use_cache=None, past_key_values=None, **kwargs) -> CausalLMOutputWithPast:
        logprobs = [torch.log_softmax(m(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                        inputs_embeds=inputs_embeds, use_cache=False).logits.float(), -1)
                    for m in self.members]
        logits = torch.logsumexp(torch.stack(logprobs), 0) - math.log(len(logprobs))
        loss = None
        if labels is not None:  # the causal-LM loss a member computes: labels shifted inside
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten().to(logits.device),
                                                     ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)


AutoConfig.register(MODEL_TYPE, EnsembleConfig, exist_ok=True)
AutoModelForCausalLM.register(EnsembleConfig, EnsembleForCausalLM, exist_ok=True)
