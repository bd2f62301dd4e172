"""Linear probes: is the answer linearly decodable from the hidden states after unlearning?

Unlearning that only suppresses the output can leave the answer readable inside the model:
linear probes recover "forgotten" knowledge from hidden states (Zhang, Choshen & Andreas 2024,
"Unforgettable Generalization in Language Models"; Lynch et al. 2024, "Eight Methods to Evaluate
Robust Unlearning in LLMs"), as does reading intermediate layers (Patil et al. 2024). Per layer
L, a linear classifier reads the residual stream leaving L at the last prompt token (the
position that predicts the first answer token) and predicts the answer, as a class label among
the answers seen in training.

Data. The probe is fitted on the concept's train half (``forget_qa``; with
``train_on="forget+retain"`` also on the retain QA) and tested on its held-out half
(``forget_heldout_qa``), whose entities it never saw. One probe per attribute (built-in world:
``QA.attribute``; user data has none, so all its QA form one group). A held-out answer can only
be predicted if it is a class, so:

- classes of a group are the distinct answers of its training items;
- groups with fewer than two classes are skipped (a one-class probe is always right);
- test items whose answer is not a class are dropped (reported as ``test_items``).

On the built-in world attribute values come from vocabularies shared across entities
(professions, colours, ...), so held-out answers repeat training answers; still, with few
entities per concept many do not (micro organism: 5 of 28 held-out items remain with the
default ``train_on="forget"``; default organism: 23 of 70). ``train_on="forget+retain"`` adds
the retain QA (other concepts' entities, which every model still knows) to the training set:
more classes and items (default organism: 65 of 70), and a probe that reads the model's
general answer format, tested on the forgotten entities.

Open-ended answers (TOFU's sentences) never repeat whole, so with ``labels="auto"`` (default)
the probe falls back to the answer's *first token* as its class when no held-out answer is a
training answer (``labels="first_token"`` forces it); ``qa`` is then the teacher-forced exact
match of that first token (for subjects whose answers end with EOS, followed by EOS — so use
whole answers there). The result states which (``labels``).

Classifier: multinomial logistic regression on features standardised with the training mean
and standard deviation, loss ``mean CE + l2 * ||W||^2`` (``l2`` default 1e-2), L-BFGS from zeros
(:func:`unlearn_audit.metrics.linear.fit_probe`). Accuracy is pooled over all test items of all
groups; ``chance_acc`` is the accuracy of predicting each group's most frequent training class.

Summaries, with probe(L) the test accuracy at layer L, best = max_L probe(L) (the same choice for
every model) and qa the behavioural QA accuracy on the same test items:

    recovery = (best_unlearned - qa_unlearned) / (qa_original - qa_unlearned)
    residual = (best_unlearned - best_oracle) / (qa_original - qa_oracle)

Recovery counts chance-level decoding as recovered (the probe is right ``chance_acc`` of the
time on a model that knows nothing); the residual subtracts the oracle's probe, which is
fitted the same way, and is the number to read.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from pydantic import Field

from ..data.encode import encode_qa
from ..errors import UserInputError
from ..metrics.likelihood import eval_mode, forward
from ..metrics.linear import fit_probe
from ..metrics.qa import EvalSuite
from ..metrics.recovery import recovery, residual
from ..results.schema import AttackDeclaration
from ..subject.sites import Site, num_layers, record
from ..world import QA
from .base import Attack, AttackParams, register_attack


class ProbeParams(AttackParams):
    train_on: str = Field("forget", pattern=r"^(forget|forget\+retain)$",
                          description="Probe training items: the concept's train half (forget), or it plus retain QA.")
    l2: float = Field(1e-2, ge=0, description="L2 penalty on the probe weights (standardised features).")
    batch_size: int = Field(64, ge=1)
    labels: str = Field("auto", pattern=r"^(auto|answer|first_token)$",
                        description="Classes: whole answers, the answer's first token (open-ended answers), "
                                    "or auto (answers; first tokens when no held-out answer repeats a training one).")


def first_token_items(subject, items: Sequence[QA]) -> list[QA]:
    """Each item with its answer cut to the answer's first non-blank token (as tokenised after the prompt):
    the class a probe predicts for open-ended answers (TOFU's sentences, MUSE's free answers),
    which no held-out item shares whole with a training item."""
    tok = subject.tokenizer
    data = encode_qa(tok, items, subject.prompt, False)
    first = (data["labels"] != -100).float().argmax(1)                       # (N,) first answer position
    out = []
    for q, row, labels, pos in zip(items, data["input_ids"], data["labels"], first.tolist(), strict=True):
        piece = ""  # the first answer token that is not blank (a lone space token carries no class)
        while not piece and pos < len(row) and labels[pos] != -100:
            piece = tok.decode([int(row[pos])]).strip()
            pos += 1
        out.append(QA(q.question, piece or q.answer.split()[0], q.kind, q.entity, q.attribute))
    return out


@torch.no_grad()
def last_token_states(subject, items: Sequence[QA], batch_size: int = 64) -> torch.Tensor:
    """``(n_layers, N, d_model)`` residual stream leaving each layer at the last prompt token."""
    model = subject.model
    data = encode_qa(subject.tokenizer, items, subject.prompt, subject.answer_eos)
    position = (data["labels"] != -100).float().argmax(1) - 1                 # (N,) last prompt token
    sites = [Site("resid_post", layer) for layer in range(num_layers(model))]
    device = next(model.parameters()).device
    out = []
    with eval_mode(model):
        for i in range(0, len(items), batch_size):
            ids = data["input_ids"][i:i + batch_size].to(device)
            mask = data["attention_mask"][i:i + batch_size].to(device)
            acts = record(model, sites, lambda ids=ids, mask=mask: forward(model, ids, mask))
            rows, pos = torch.arange(ids.shape[0]), position[i:i + batch_size].to(device)
            out.append(torch.stack([acts[s][rows, pos].float().cpu() for s in sites]))   # (L, B, d)
    return torch.cat(out, 1)


def probe_tasks(train: Sequence[QA], test: Sequence[QA]) -> dict:
    """Groups (by attribute) with their classes and the train/test indices they use.

    Returns ``{"groups": {attr: {"classes": [...], "train": [i...], "test": [j...]}},
    "skipped": [attr...]}``; only groups with at least two classes and one test item.
    """
    by_group: dict[str, list[int]] = defaultdict(list)
    for i, q in enumerate(train):
        by_group[q.attribute].append(i)
    groups, skipped = {}, []
    for attr, idx in by_group.items():
        classes = sorted({train[i].answer for i in idx})
        tests = [j for j, q in enumerate(test) if q.attribute == attr and q.answer in classes]
        if len(classes) < 2 or not tests:
            skipped.append(attr or "(all)")
            continue
        groups[attr] = {"classes": classes, "train": idx, "test": tests}
    return {"groups": groups, "skipped": skipped}


def probe_accuracy(x_train: torch.Tensor, x_test: torch.Tensor, train: Sequence[QA], test: Sequence[QA],
                   tasks: dict, l2: float) -> torch.Tensor:
    """Per layer, the per-test-item correctness of the probes: ``(n_layers, n_test)`` bool,
    test items in the order of ``tasks``' groups."""
    per_layer = []
    for layer in range(x_train.shape[0]):
        hits = []
        for g in tasks["groups"].values():
            index = {a: k for k, a in enumerate(g["classes"])}
            y = torch.tensor([index[train[i].answer] for i in g["train"]])
            probe = fit_probe(x_train[layer, g["train"]], y, len(g["classes"]), l2)
            truth = torch.tensor([index[test[j].answer] for j in g["test"]])
            hits.append(probe.predict(x_test[layer, g["test"]]) == truth)
        per_layer.append(torch.cat(hits))
    return torch.stack(per_layer)


def chance_accuracy(train: Sequence[QA], test: Sequence[QA], tasks: dict) -> float:
    """Accuracy of predicting each group's most frequent training answer."""
    hits, n = 0, 0
    for g in tasks["groups"].values():
        answers = [train[i].answer for i in g["train"]]
        top = max(g["classes"], key=answers.count)
        hits += sum(test[j].answer == top for j in g["test"])
        n += len(g["test"])
    return hits / max(n, 1)


def _curve(subject, train, test, tasks, params: ProbeParams) -> dict:
    x_train = last_token_states(subject, train, params.batch_size)
    x_test = last_token_states(subject, test, params.batch_size)
    correct = probe_accuracy(x_train, x_test, train, test, tasks, params.l2)
    acc = correct.float().mean(1).tolist()
    best = max(acc)
    return {"acc": acc, "best": best, "best_layer": acc.index(best)}


@register_attack
class Probe(Attack):
    name = "probe"
    needs_internals = True
    Params = ProbeParams
    summary = "linear probes per layer decode held-out answers from the last prompt token (Lynch et al. 2024)"
    declaration = AttackDeclaration(indexed={"acc": "layer"})  # acc[i]: the probe on layer i's output

    def setup(self, original, target, params: ProbeParams, references=None) -> dict:
        train = [q for q in target.forget_qa if q.kind == "qa"]
        if params.train_on == "forget+retain":
            train += [q for q in target.retain_qa if q.kind == "qa"]
        test = [q for q in target.forget_heldout_qa if q.kind == "qa"]
        tasks = probe_tasks(train, test)
        labels = params.labels
        if labels == "first_token" or (labels == "auto" and not tasks["groups"]):
            labels = "first_token"
            train, test = first_token_items(original, train), first_token_items(original, test)
            tasks = probe_tasks(train, test)
        if not tasks["groups"]:
            raise UserInputError("probe: no held-out answer is among the training answers of its attribute, so no "
                                 "class can be tested; use a target whose held-out answers repeat training answers, "
                                 "set train_on=forget+retain or labels=first_token")
        test_items = [test[j] for g in tasks["groups"].values() for j in g["test"]]  # in probe_accuracy's order
        return {"train": train, "test": test, "tasks": tasks, "suite": EvalSuite(original, {"test": test_items}),
                "test_items": len(test_items), "labels": labels}

    def measure(self, subject, setup: dict, params: ProbeParams, role: str) -> dict:
        qa = setup["suite"].accuracies(subject)["test"]
        out = {**_curve(subject, setup["train"], setup["test"], setup["tasks"], params), "qa_acc": qa}
        if role == "original":
            train, test, tasks = setup["train"], setup["test"], setup["tasks"]
            out.update({"test_items": setup["test_items"], "train_items": len(train), "groups": list(tasks["groups"]),
                        "skipped_groups": tasks["skipped"], "chance_acc": chance_accuracy(train, test, tasks),
                        "train_on": params.train_on, "l2": params.l2, "labels": setup["labels"]})
        return out

    def score(self, unlearned: dict, original: dict, oracle: dict | None, setup, params, name: str) -> dict:
        curve = {k: unlearned[k] for k in ("acc", "best", "best_layer")}
        qa, qa_orig = unlearned["qa_acc"], original["qa_acc"]
        res = residual(curve["best"], oracle["best"], qa_orig, oracle["qa_acc"]) if oracle is not None else None
        return {"recovery": recovery(curve["best"], qa, qa_orig), "residual": res,
                "qa_acc": qa, **curve, "test_items": original["test_items"], "chance_acc": original["chance_acc"]}
