"""Who's Harry Potter (Eldan & Russinovich 2023, "Who's Harry Potter? Approximate Unlearning in
LLMs"): fine-tune the model to predict what a model that never learned the concept would
predict, on the forget texts.

1. **Reinforced model**: a copy of the subject fine-tuned further on the forget texts
   (``reinforce_steps`` at ``reinforce_lr``): it is *more* confident about the concept.
2. **Generic predictions** (reinforcement bootstrapping), per token position of each forget text:
   ``v_generic = v_base - alpha * ReLU(v_reinforced - v_base)`` on the logits; tokens the
   reinforced model boosts are the concept-specific ones, so they are pushed down.
3. **Anchored terms**: where the data names its entities (the built-in world: people, the
   concept, its cities), occurrences of an anchor in a forget text are replaced with a generic
   translation (a name of the same token length drawn from a pool of made-up names), and the
   base model's predictions *on the translated text* at those positions replace the labels
   there (the paper's "what would a generic model say here"). Anchors whose translation has a
   different token length are left to step 2.
4. **Fine-tune** the subject on the forget texts with the argmax of the combined generic
   predictions as labels (cross-entropy), ``steps`` at ``lr``.

What is not the paper's: its anchored dictionary was written with GPT-4 and translated
whole passages; here anchors come from the target's entity names and translation is
token-aligned replacement only. Paper: alpha 5, reinforcement ~3 epochs, fine-tuning ~2 epochs
(Llama-2 7B); defaults below come from the organism.
"""

from __future__ import annotations

import random

import torch
from pydantic import Field

from .. import progress
from ..data.encode import encode_texts
from ..errors import UserInputError
from ..metrics.likelihood import IGNORE, forward_logits, mean_token_nll
from ..params import MAX_STEPS
from ..subject.residency import resident
from ..training import TrainConfig, seed_everything, shuffled_minibatches, train
from .base import Method, MethodParams, register_method

GENERIC_SYLLABLES = ("al", "ben", "cor", "dan", "el", "fin", "gar", "hal", "ian", "jon", "kel", "lor",
                     "mar", "nel", "or", "per", "ros", "sam", "tor", "val")


class WHPParams(MethodParams):
    alpha: float = Field(5.0, ge=0, description="Strength of the reinforcement bootstrapping.")
    reinforce_steps: int = Field(30, ge=0, le=MAX_STEPS)
    reinforce_lr: float = Field(3e-4, gt=0)
    # steps and lr from the sweep on the default organism (BENCHMARKS.md)
    steps: int = Field(60, ge=0, le=MAX_STEPS, description="Fine-tuning steps on the generic labels.")
    lr: float = Field(3e-4, gt=0)
    batch_size: int = Field(16, ge=1)
    anchors: bool = Field(True, description="Replace anchored terms (entity names) by generic translations.")


def anchors_of(target) -> list[str]:
    """Names to anchor: the entities, the concept and its members' cities (built-in world only)."""
    names = {q.entity for q in target.all_forget_qa if q.entity}
    names |= {q.answer for q in target.all_forget_qa if q.attribute in ("concept", "birthplace")}
    # longest first (a name inside a longer one is replaced as part of it); ties by name, so the
    # order never depends on the set's string hashing (PYTHONHASHSEED)
    return sorted(names, key=lambda name: (-len(name), name))


def _generic_name(tokenizer, n_tokens: int, rng: random.Random, tries: int = 200) -> str | None:
    for _ in range(tries):
        name = "".join(rng.choice(GENERIC_SYLLABLES) for _ in range(rng.randint(1, 3))).capitalize()
        if len(tokenizer(" " + name, add_special_tokens=False)["input_ids"]) == n_tokens:
            return name
    return None


@torch.no_grad()
def generic_labels(base, reinforced, data: dict, alpha: float, batch_size: int = 32) -> torch.Tensor:
    """Labels = argmax of ``v_base - alpha * ReLU(v_reinforced - v_base)`` at every scored position
    (shifted so that ``labels[:, t]`` is the target for the token at t, as HF labels are)."""
    labels = data["labels"].clone()
    device = next(base.parameters()).device
    for i in range(0, len(labels), batch_size):
        batch = {k: data[k][i:i + batch_size].to(device) for k in ("input_ids", "attention_mask")}
        v_base = forward_logits(base, batch).float()                   # (B, T, V)
        v_rein = forward_logits(reinforced, batch).float()
        generic = v_base - alpha * torch.relu(v_rein - v_base)
        pred = generic.argmax(-1)[:, :-1].cpu()                        # predicts token t+1
        rows = labels[i:i + batch_size]
        scored = rows[:, 1:] != IGNORE
        rows[:, 1:][scored] = pred[scored]
    return labels


def anchored_texts(texts: list[str], anchors: list[str], tokenizer, seed: int) -> tuple[list[str], dict[str, str]]:
    rng = random.Random(seed)
    table = {}
    for a in anchors:
        n = len(tokenizer(" " + a, add_special_tokens=False)["input_ids"])
        g = _generic_name(tokenizer, n, rng)
        if g is not None:
            table[a] = g
    out = []
    for t in texts:
        for a, g in table.items():
            t = t.replace(a, g)
        out.append(t)
    return out, table


@torch.no_grad()
def anchor_labels(base, labels: torch.Tensor, data: dict, translated: dict, batch_size: int = 32) -> int:
    """Overwrite ``labels`` (in place) with ``base``'s predictions on the translated text where
    the translated tokens differ from the original ones; returns how many labels changed."""
    device = next(base.parameters()).device
    width = min(data["input_ids"].shape[1], translated["input_ids"].shape[1])
    same_length = data["attention_mask"].sum(1) == translated["attention_mask"].sum(1)      # (N,)
    n = 0
    for i in range(0, len(labels), batch_size):
        rows = slice(i, i + batch_size)
        batch = {k: translated[k][rows].to(device) for k in ("input_ids", "attention_mask")}
        pred = forward_logits(base, batch).argmax(-1)[:, :width - 1].cpu()                 # predicts t+1
        differs = translated["input_ids"][rows, 1:width] != data["input_ids"][rows, 1:width]
        differs &= same_length[rows, None] & (labels[rows, 1:width] != IGNORE)
        labels[rows, 1:width][differs] = pred[differs]
        n += int(differs.sum())
    return n


@register_method("whp")
class WhosHarryPotter(Method):
    kind = "finetune"
    Params = WHPParams

    def apply(self, out, subject, target, params):
        if not target.forget_text:
            raise UserInputError("whp needs forget texts (forget.jsonl lines with \"text\")")
        seed_everything(params.seed)
        tok = subject.tokenizer
        data = encode_texts(tok, target.forget_text)
        # 1. reinforced model, 2. generic predictions: the copy is reinforced first, then reset to
        # the subject's weights for step 4 (two models in memory, never three; only the one training on the device)
        reinforced = out.model
        if params.reinforce_steps:
            with resident(reinforced):
                train(reinforced, lambda b: mean_token_nll(reinforced, b),
                      shuffled_minibatches(data, params.batch_size, params.seed, out.device),
                      TrainConfig(steps=params.reinforce_steps, lr=params.reinforce_lr, seed=params.seed),
                      description="whp: reinforcing")
        reinforced.eval()
        labels = generic_labels(subject.model, reinforced, data, params.alpha)
        with torch.no_grad():  # the training loop has freed its gradients
            reinforced.load_state_dict(subject.model.state_dict())
        # 3. anchored terms: base predictions on the translated text, at the positions where it
        # differs, in the rows whose translation kept the token count (others keep step 2's labels)
        n_anchored = 0
        anchors = anchors_of(target) if params.anchors else []
        if anchors:
            translated, _ = anchored_texts(target.forget_text, anchors, tok, params.seed)
            n_anchored = anchor_labels(subject.model, labels, data, encode_texts(tok, translated))
        ft = {**data, "labels": labels}
        # 4. fine-tune on the generic labels
        model = out.model
        with resident(model):
            log = train(model, lambda b: mean_token_nll(model, b),
                        shuffled_minibatches(ft, params.batch_size, params.seed, out.device),
                        TrainConfig(steps=params.steps, lr=params.lr, seed=params.seed), description="unlearning: whp")
        model.eval()
        progress.log(f"whp: {n_anchored} anchored-term labels from generic translations")
        return {"anchored_labels": n_anchored, "final_loss": log.losses[-1] if log.losses else None}
