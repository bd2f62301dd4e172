"""Patching / restoration: which components of the unlearned model hide the knowledge?

Hong et al. 2024 ("Dissecting Fine-Tuning Unlearning in Large Language Models") restore parts of
the original (vanilla) model's computation inside the unlearned model and measure how much of
the vanilla behaviour comes back, with the Knowledge Recovery Score

    KRS = 1 - MSE(logits_vanilla, logits_restored) / MSE(logits_vanilla, logits_unlearned)

over the logits at the last ``n`` positions of the sequence (mean over positions and
vocabulary), where the input is the question followed by the *vanilla* model's greedy answer of
``n`` tokens (``max_new_tokens``, default 30), teacher-forced. Those are the positions of the
answer tokens themselves, ``logits[i, -length:]`` in the authors' notebook
(yihuaihong/Dissecting-FT-Unlearning, ``Restoration_experiments_llama-30tokens.ipynb``): they
predict the answer's 2nd..n-th token and the token after it. ``positions=answer`` takes the
positions one earlier instead, the ones whose next-token logits predict the n answer tokens. KRS is computed per question and averaged over the questions that
unlearning changed (MSE_unlearned > 1e-12). 1: restoring this component brings the vanilla
logits back; 0: it brings nothing back.

Interventions, each over a window of ``window`` consecutive layers centred on every layer
(truncated at the edges):

- ``coefficients``: the MLP coefficients (input of the down projection) of the vanilla run;
- ``value_vectors``: the vanilla down-projection weights (swapped in temporarily);
- ``attention``: the attention outputs of the vanilla run;
- ``coefficients+attention``: both.

Hong et al. find value vectors restore almost nothing (KRS < 0.001) while coefficients and
attention in a few layers restore a lot: unlearning changes how knowledge is *retrieved*, not
the knowledge stored in the value vectors.

Two controls make a high KRS interpretable:

- the same KRS on unrelated QA (``control_unrelated``);
- a *content control* (``content_control``): coefficients taken from the vanilla run on a
  *different* entity's question (same attribute, same token length; the recipient's answer
  teacher-forced), patched into the recipient's run. If that restores as much as the real
  coefficients, restoration recovers the answer format, not the specific fact.

Efficiency: per chunk of questions the vanilla model runs once (activations cached) and the
unlearned model once; the patched forwards of all windows are stacked along the batch
(one row per question x window), so the cost is one forward per window chunk, not one per
window and question. Value-vector restoration swaps weights, one forward per window.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from functools import partial
from typing import Literal

import torch
from pydantic import Field

from .. import progress
from ..errors import UserInputError
from ..metrics.generation import greedy_continuations
from ..metrics.likelihood import forward_logits
from ..results.schema import AttackDeclaration
from ..subject import residency
from ..subject.residency import resident
from ..subject.sites import Site, hooks, num_layers, patched_weights, record, value_vectors
from ..world import QA
from .base import Attack, AttackParams, register_attack, sample_items

INTERVENTIONS = ("coefficients", "value_vectors", "attention", "coefficients+attention")
_SITES = {"coefficients": ("mlp_coefficients",), "attention": ("attn_out",),
          "coefficients+attention": ("mlp_coefficients", "attn_out")}
EPS = 1e-12


class PatchingParams(AttackParams):
    window: int | None = Field(None, ge=1, description="Layers per window (default: 5, at most a quarter of the depth).")
    max_new_tokens: int = Field(30, ge=1, description="Length of the vanilla greedy answer that is teacher-forced.")
    max_questions: int | None = Field(None, ge=1, description="Use at most this many questions per set (seeded).")
    batch_size: int = Field(32, ge=1, description="Questions per chunk (patched rows per forward: this x windows).")
    content_control: bool = Field(True, description="Also patch coefficients from another entity's question.")
    max_rows: int = Field(256, ge=1, description="Most sequences per patched forward pass (questions x windows).")
    positions: Literal["notebook", "answer"] = Field(
        "notebook", description="Logits compared: at the answer tokens, logits[-n:] (notebook: Hong et al.'s code) "
                                "or at the positions predicting them (answer).")


def default_window(n_layers: int) -> int:
    """Hong et al. use 5 layers on 32-layer models; capped at a quarter of the depth so a small
    model still shows a per-layer profile."""
    return max(1, min(5, n_layers // 4))


def windows(n_layers: int, width: int) -> list[list[int]]:
    """For every centre layer, the ``width`` layers around it (centred, truncated at the edges)."""
    lo = (width - 1) // 2
    return [[x for x in range(c - lo, c - lo + width) if 0 <= x < n_layers] for c in range(n_layers)]


def encode_teacher_forced(prompts: Sequence[list[int]], answers: Sequence[list[int]], pad_id: int,
                          width: int | None = None) -> dict:
    """``prompt + answer`` rows right-padded to ``width`` (default: the longest) and, per row, the
    positions whose logits predict the answer tokens (``start``, ``length``)."""
    rows = [list(p) + list(a) for p, a in zip(prompts, answers, strict=True)]
    width = width or max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    start = torch.tensor([len(p) - 1 for p in prompts])
    length = torch.tensor([len(a) for a in answers])
    return {"input_ids": ids, "attention_mask": mask, "start": start, "length": length}


def answer_mask(batch: dict, positions: str = "notebook") -> torch.Tensor:
    """(B, T) bool: the positions whose logits KRS compares. ``notebook``: the answer tokens'
    own positions (the row's last ``length``, as ``logits[i, -length:]`` of Hong et al.'s
    left-padded batches); ``answer``: the positions whose next-token logits predict them."""
    t = torch.arange(batch["input_ids"].shape[1])
    first = batch["start"] + (1 if positions == "notebook" else 0)
    return (t >= first[:, None]) & (t < (first + batch["length"])[:, None])


def per_row_mse(logits: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) mean over masked positions and vocabulary of the squared logit difference."""
    sq = ((logits.float() - reference.float()) ** 2).mean(-1)                # (B, T)
    m = mask.to(sq.dtype)
    return (sq * m).sum(1) / m.sum(1).clamp(min=1)


def krs(mse_restored: torch.Tensor, mse_unlearned: torch.Tensor) -> float | None:
    """Mean over questions of 1 - MSE_restored / MSE_unlearned, over questions unlearning changed."""
    ok = mse_unlearned > EPS
    if not bool(ok.any()):
        return None
    return float((1 - mse_restored[ok] / mse_unlearned[ok]).mean())


def patch_windows(model, batch: dict, cached: dict[Site, torch.Tensor], wins: list[list[int]],
                  kinds: tuple[str, ...], metric, max_rows: int) -> torch.Tensor:
    """The generic patching driver (the shape of TransformerLens's ``generic_activation_patch``):
    ``(len(wins), B)`` values of ``metric`` on the logits of ``batch`` run with ``cached``
    (activations of the same B rows, at sites of ``kinds``) restored at the layers of each
    window. ``metric(logits, w)`` maps the ``(B, T, V)`` logits of window ``w`` to ``(B,)``. The
    copies of the batch for all windows are stacked along the batch, at most ``max_rows`` rows
    per forward pass; each pass's logits are reduced by ``metric`` before the next (only one
    pass's logits are ever held)."""
    n = batch["input_ids"].shape[0]
    per_pass = max(1, max_rows // n)
    out = []
    for g in range(0, len(wins), per_pass):
        group = wins[g:g + per_pass]
        stacked = {k: batch[k].repeat(len(group), 1) for k in ("input_ids", "attention_mask")}
        fns = {}
        for kind in kinds:
            for layer in range(num_layers(model)):
                # stacked row w * n + i is question i under window w
                copies = [w for w, win in enumerate(group) if layer in win]
                if not copies:
                    continue
                rows = torch.tensor([w * n + i for w in copies for i in range(n)])
                source = cached[Site(kind, layer)].repeat(len(copies), *([1] * (cached[Site(kind, layer)].dim() - 1)))

                def restore(x, rows=rows, source=source):
                    x = x.clone()
                    x[rows.to(x.device)] = source.to(x.dtype)
                    return x

                fns[Site(kind, layer)] = restore
        with hooks(model, fns):
            logits = forward_logits(model, stacked)
        out += [metric(logits[i * n:(i + 1) * n], g + i) for i in range(len(group))]
    return torch.stack(out)


def _donors(items: Sequence[QA], pool: Sequence[QA], prompt_lengths: list[int], pool_lengths: list[int]) -> list[int | None]:
    """For each item, the index in ``pool`` of a question about another entity with the same
    attribute and the same prompt token length (None when there is none)."""
    by_key = defaultdict(list)
    for j, (q, n) in enumerate(zip(pool, pool_lengths, strict=True)):
        by_key[(q.attribute, n)].append(j)
    out = []
    for q, n in zip(items, prompt_lengths, strict=True):
        candidates = [j for j in by_key[(q.attribute, n)] if pool[j].question != q.question
                      and (not q.entity or pool[j].entity != q.entity)]
        out.append(candidates[0] if candidates else None)
    return out


def _parked(tensors: dict[Site, torch.Tensor] | torch.Tensor):
    keys = list(tensors) if isinstance(tensors, dict) else None
    values = [tensors[k] for k in keys] if keys is not None else [tensors]
    return keys, residency.park({str(i): t for i, t in enumerate(values)})


def _unparked(parked) -> dict[Site, torch.Tensor] | torch.Tensor:
    keys, stored = parked
    values = residency.unpark(stored)
    return {k: values[str(i)] for i, k in enumerate(keys)} if keys is not None else values["0"]


@torch.no_grad()
def record_original(original, items: Sequence[QA], params: PatchingParams, donor_pool: Sequence[QA] = ()) -> dict:
    """Everything :func:`krs_profile` needs of the original, computed once: its greedy answers,
    per batch its logits and its activations at every site (and a donor's coefficients, for
    the content control), and its value vectors. The tensors wait where offloaded weights go
    (``subject/residency.py``), so the original need not be on the device while an unlearned
    model is patched with them."""
    model_v = original.model
    n_layers = num_layers(model_v)
    tok = original.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    prompts, answers = greedy_continuations(original, items, params.max_new_tokens)
    keep = [i for i, a in enumerate(answers) if a]
    prompts, answers, items = [prompts[i] for i in keep], [answers[i] for i in keep], [items[i] for i in keep]
    donors: list[int | None] = [None] * len(items)
    donor_prompts: list[list[int]] = []
    if params.content_control and donor_pool:
        from ..data.encode import render_prompt, tokenize_prompts

        donor_prompts = tokenize_prompts(tok, donor_pool, [render_prompt(q, original.prompt, tok) for q in donor_pool],
                                         original.prompt)
        donors = _donors(items, donor_pool, [len(p) for p in prompts], [len(p) for p in donor_prompts])
    was = model_v.training
    model_v.eval()
    sites = [Site(k, layer) for k in ("mlp_coefficients", "attn_out") for layer in range(n_layers)]
    device = next(model_v.parameters()).device
    batches = []
    try:
        for c in range(0, len(items), params.batch_size):
            sl = slice(c, c + params.batch_size)
            batch = encode_teacher_forced(prompts[sl], answers[sl], pad)
            dev = {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}
            held = {}
            cached = record(model_v, sites, lambda dev=dev, held=held: held.setdefault("logits", forward_logits(model_v, dev)))
            out = {"batch": batch, "mask": answer_mask(batch, params.positions), "cached": _parked(cached),
                   "logits": _parked(held["logits"]), "have": [], "donor": None}
            chunk_donors = donors[sl]
            have = [i for i, d in enumerate(chunk_donors) if d is not None]
            if have:
                d_batch = encode_teacher_forced([donor_prompts[chunk_donors[i]] for i in have],
                                                [answers[c + i] for i in have], pad, dev["input_ids"].shape[1])
                d_dev = {k: d_batch[k].to(device) for k in ("input_ids", "attention_mask")}
                d_cached = record(model_v, [s for s in sites if s.kind == "mlp_coefficients"],
                                  lambda d_dev=d_dev: forward_logits(model_v, d_dev))
                out["have"], out["donor"] = have, _parked(d_cached)
            batches.append(out)
    finally:
        model_v.train(was)
    vectors = {layer: _parked(value_vectors(model_v, layer).detach().clone()) for layer in range(n_layers)}
    return {"n_layers": n_layers, "shape": tuple(value_vectors(model_v, 0).shape), "questions": len(items),
            "batches": batches, "value_vectors": vectors}


@torch.no_grad()
def krs_profile(original, unlearned, items: Sequence[QA], params: PatchingParams,
                donor_pool: Sequence[QA] = (), recorded: dict | None = None) -> dict:
    """KRS per intervention per window centre on ``items`` (and the content control);
    ``recorded``: :func:`record_original` of the same arguments, made earlier (else made now)."""
    model_u = unlearned.model
    rec = record_original(original, items, params, donor_pool) if recorded is None else recorded
    n_layers = rec["n_layers"]
    if num_layers(model_u) != n_layers or tuple(value_vectors(model_u, 0).shape) != rec["shape"]:
        raise UserInputError("patching needs the unlearned model to have the original's architecture")
    width = params.window or default_window(n_layers)
    wins = windows(n_layers, width)
    was = model_u.training
    model_u.eval()
    mse_u_all, mse = [], defaultdict(list)               # intervention -> list of (W, B) chunks
    content_rows, content_mse_u = [], []
    device = next(model_u.parameters()).device
    try:
        for b in rec["batches"]:
            mask = b["mask"].to(device)
            dev = {k: b["batch"][k].to(device) for k in ("input_ids", "attention_mask")}
            cached, logits_v = _unparked(b["cached"]), _unparked(b["logits"])
            mse_u = per_row_mse(forward_logits(model_u, dev), logits_v, mask)                    # (B,)
            mse_u_all.append(mse_u.cpu())
            def vs_vanilla(logits, w, ref=logits_v, mask=mask):
                return per_row_mse(logits, ref, mask)

            for name, kinds in _SITES.items():
                mse[name].append(patch_windows(model_u, dev, cached, wins, kinds, vs_vanilla, params.max_rows).cpu())
            vv = []
            for win in wins:
                with patched_weights(model_u, {layer: partial(_unparked, rec["value_vectors"][layer]) for layer in win}):
                    vv.append(per_row_mse(forward_logits(model_u, dev), logits_v, mask).cpu())
            mse["value_vectors"].append(torch.stack(vv))
            # content control: coefficients from another entity's question, recipient's answer
            have = b["have"]
            if have:
                r_dev = {k: v[have] for k, v in dev.items()}
                def vs_recipient(logits, w, ref=logits_v[have], mask=mask[have]):
                    return per_row_mse(logits, ref, mask)

                content_rows.append(patch_windows(model_u, r_dev, _unparked(b["donor"]), wins, ("mlp_coefficients",),
                                                  vs_recipient, params.max_rows).cpu())
                content_mse_u.append(mse_u[have].cpu())
    finally:
        model_u.train(was)
    mse_u = torch.cat(mse_u_all) if mse_u_all else torch.zeros(0)
    out = {"window": width, "layers": list(range(n_layers)), "windows": wins, "questions": rec["questions"],
           "changed_questions": int((mse_u > EPS).sum()),
           "krs": {name: [krs(torch.cat(mse[name], 1)[w], mse_u) for w in range(len(wins))] if mse[name] else []
                   for name in INTERVENTIONS}}
    if params.content_control:
        if content_rows:
            rows, base = torch.cat(content_rows, 1), torch.cat(content_mse_u)
            out["content_control"] = {"coefficients": [krs(rows[w], base) for w in range(len(wins))],
                                      "questions": int(rows.shape[1])}
        else:
            out["content_control"] = None
    return out


@torch.no_grad()
def krs_profile_loop(original, unlearned, items: Sequence[QA], params: PatchingParams) -> dict[str, list]:
    """The straightforward reference for :func:`krs_profile` (no content control): for every
    window, intervention and question, run the vanilla and the unlearned model again, one
    question at a time. Same numbers, many more forward passes; tests and benchmarks use it."""
    model_v, model_u = original.model, unlearned.model
    n_layers = num_layers(model_v)
    wins = windows(n_layers, params.window or default_window(n_layers))
    prompts, answers = greedy_continuations(original, items, params.max_new_tokens)
    pad = original.tokenizer.pad_token_id or 0
    kinds = {**_SITES, "value_vectors": ()}
    out = {name: [] for name in INTERVENTIONS}
    for win in wins:
        restored, unlearned_mse = {name: [] for name in INTERVENTIONS}, []
        for p, a in zip(prompts, answers, strict=True):
            if not a:
                continue
            b = encode_teacher_forced([p], [a], pad)
            mask = answer_mask(b, params.positions)
            for name in INTERVENTIONS:
                sites = [Site(k, layer) for k in kinds[name] for layer in win]
                held = {}
                cache = record(model_v, sites, lambda b=b, held=held: held.setdefault("v", forward_logits(model_v, b)))
                vanilla = held["v"]
                mse_u = per_row_mse(forward_logits(model_u, b), vanilla, mask)
                if name == "value_vectors":
                    with patched_weights(model_u, {layer: value_vectors(model_v, layer) for layer in win}):
                        restored[name].append(per_row_mse(forward_logits(model_u, b), vanilla, mask))
                else:
                    with hooks(model_u, {s: (lambda x, s=s, cache=cache: cache[s]) for s in sites}):
                        restored[name].append(per_row_mse(forward_logits(model_u, b), vanilla, mask))
            unlearned_mse.append(mse_u)
        for name in INTERVENTIONS:
            out[name].append(krs(torch.cat(restored[name]), torch.cat(unlearned_mse)))
    return out


def best(profile: dict) -> float | None:
    values = [v for series in profile["krs"].values() for v in series if v is not None]
    return max(values) if values else None


@register_attack
class Patching(Attack):
    """Restores the original's computation in each unlearned model: nothing to measure on the
    original or the oracle by themselves."""

    name = "patching"
    needs_internals = True
    Params = PatchingParams
    summary = "restore vanilla MLP coefficients / value vectors / attention by layer window (KRS, Hong et al. 2024)"
    declaration = AttackDeclaration(headline="recovery", fallback=None, label="KRS")

    def setup(self, original, target, params, references=None):
        qa = [q for q in target.all_forget_qa if q.kind == "qa"]
        return {"original": original, "forget": sample_items(qa, params.max_questions, params.seed),
                "unrelated": sample_items([q for q in target.unrelated_qa if q.kind == "qa"], params.max_questions,
                                          params.seed),
                "pool": target.all_forget_qa + target.retain_qa + target.unrelated_qa}

    def measure(self, subject, setup: dict, params: PatchingParams, role: str) -> dict | None:
        if role != "unlearned":
            return None
        original, unrelated = setup["original"], setup["unrelated"]
        no_control = params.model_copy(update={"content_control": False})
        if "recorded" not in setup:  # once per run, with the original on the device (and only it)
            with resident(original.model):
                setup["recorded"] = (record_original(original, setup["forget"], params, setup["pool"]),
                                     record_original(original, unrelated, no_control) if unrelated else None)
        recorded, recorded_control = setup["recorded"]
        progress.log(f"  patching {progress.plain(subject.name)}: {len(setup['forget'])} forget questions")
        profile = krs_profile(original, subject, setup["forget"], params, setup["pool"], recorded)
        control = krs_profile(original, subject, unrelated, no_control, recorded=recorded_control) \
            if unrelated else None
        return {**profile, "control_unrelated": control and {
            "krs": control["krs"], "questions": control["questions"], "changed_questions": control["changed_questions"]}}

    def score(self, profile: dict, original, oracle, setup, params, name: str) -> dict:
        control = profile["control_unrelated"]
        return {**{k: v for k, v in profile.items() if k != "control_unrelated"}, "recovery": best(profile),
                "residual": None, "control_unrelated": control}
