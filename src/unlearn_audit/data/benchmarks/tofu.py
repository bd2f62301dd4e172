"""TOFU (Maini et al. 2024): 200 fictitious authors, 20 QA each; forget 1, 5 or 10% of them.

Published layout (hub dataset ``locuslab/TOFU``, one config per file, split ``train``; a local
copy is a clone of that repository: ``<config>.json`` files, one JSON object per line):

- ``forget01|05|10``: ``question``, ``answer``; ``retain99|95|90`` the complement;
- ``forget01|05|10_perturbed``, ``retain_perturbed``: plus ``paraphrased_answer`` and
  ``perturbed_answer`` (a list: 5 wrong answers in the same style); ``paraphrased_question``
  where present;
- ``real_authors_perturbed``, ``world_facts_perturbed``: ``question``, ``answer``,
  ``perturbed_answer`` (a list of 3): general knowledge the method must keep;
- ``holdout01|05|10`` (optional): QA about authors no model was fine-tuned on (MIA non-members).

Field and config names as read by locuslab/tofu@bdc209ea7c6cc2e7079ea1afb6468d3ddcc65f8e:config/eval_everything.yaml
and locuslab/open-unlearning@d3d7cf9e6b3c125d16687d4232680d8d83548f1a:configs/data/datasets/TOFU_QA_*.yaml.

Mapping to a Target: the forget QA is split *by author* (rows come in blocks of 20 per author)
into the RTT train half and held-out half (seeded); retain QA is the matching retain split;
unrelated QA is real authors + world facts (never shown to a method). Texts are
``question + " " + answer`` (TOFU has no documents). The truth-ratio sets go to
``target.benchmark.truth``.
"""

from __future__ import annotations

import random
from pathlib import Path

from ...errors import UserInputError
from ...world import QA
from .items import BenchmarkData, TruthItem
from .source import first_file, hub_rows, need, read_rows

HUB = "locuslab/TOFU"
CONFIGS = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
HOLDOUT = {"forget01": "holdout01", "forget05": "holdout05", "forget10": "holdout10"}
QA_PER_AUTHOR = 20


def _rows(directory: Path | None, name: str, required: bool) -> list[dict] | None:
    if directory is None:
        try:
            return hub_rows(HUB, name, "train")
        except Exception:
            if required:
                raise
            return None
    path = first_file(directory, f"{name}.json", f"{name}.jsonl")
    if path is None:
        if required:
            raise UserInputError(f"TOFU directory {directory} has no {name}.json; a local copy holds the "
                                 f"files of the hub dataset {HUB} ({name}.json, ...)")
        return None
    return read_rows(path)


def _qa(rows: list[dict], where: str, entity=lambda i: "") -> list[QA]:
    out = []
    for i, r in enumerate(rows):
        need(r, ("question", "answer"), where, i)
        out.append(QA(str(r["question"]), str(r["answer"]).strip(), "qa", entity(i)))
    return out


def _truth(rows: list[dict] | None, where: str, paraphrased: bool) -> list[TruthItem]:
    out = []
    for i, r in enumerate(rows or []):
        need(r, ("question", "answer", "perturbed_answer") + (("paraphrased_answer",) if paraphrased else ()), where, i)
        pert = r["perturbed_answer"]
        if isinstance(pert, str):
            pert = [pert]
        out.append(TruthItem(str(r["question"]), str(r["answer"]),
                             str(r["paraphrased_answer"] if paraphrased else r["answer"]),
                             tuple(str(p) for p in pert)))
    return out


def load_tofu(config: str, directory: Path | None, seed: int = 0):
    """The Target for ``tofu:<config>`` (see the module docstring)."""
    from ..target import Target

    if config not in CONFIGS:
        raise UserInputError(f"unknown TOFU split {config!r}; choose one of: {', '.join(CONFIGS)}")
    retain_name = CONFIGS[config]
    forget_rows = _rows(directory, config, True)
    forget = _qa(forget_rows, f"TOFU {config}", lambda i: f"tofu-author-{i // QA_PER_AUTHOR}")
    retain = _qa(_rows(directory, retain_name, True), f"TOFU {retain_name}")
    authors = sorted({q.entity for q in forget}, key=lambda e: int(e.rsplit("-", 1)[1]))
    if len(authors) < 2:
        raise UserInputError(f"TOFU {config} has {len(forget)} rows (one author); it needs at least two "
                             f"authors ({2 * QA_PER_AUTHOR} rows) to hold one out for relearning")
    order = list(authors)
    random.Random(seed).shuffle(order)
    held = set(order[: len(order) // 2])
    truth = {
        "forget": _truth(_rows(directory, f"{config}_perturbed", False), f"TOFU {config}_perturbed", True),
        "retain": _truth(_rows(directory, "retain_perturbed", False), "TOFU retain_perturbed", True),
        "real_authors": _truth(_rows(directory, "real_authors_perturbed", False), "TOFU real_authors_perturbed", False),
        "world_facts": _truth(_rows(directory, "world_facts_perturbed", False), "TOFU world_facts_perturbed", False),
    }
    truth = {k: v for k, v in truth.items() if v}
    general = {k: [QA(t.question, t.answer.strip()) for t in truth.get(k, [])] for k in ("real_authors", "world_facts")}
    holdout_rows = _rows(directory, HOLDOUT[config], False)
    holdout = [f"{q.question} {q.answer}" for q in _qa(holdout_rows or [], f"TOFU {HOLDOUT[config]}")]
    return Target(
        name=f"tofu-{config}",
        forget_text=[f"{q.question} {q.answer}" for q in forget],
        forget_qa=[q for q in forget if q.entity not in held],
        forget_heldout_qa=[q for q in forget if q.entity in held],
        retain_text=[f"{q.question} {q.answer}" for q in retain],
        retain_qa=retain,
        unrelated_qa=general["real_authors"] + general["world_facts"],
        extra_eval={k: v for k, v in general.items() if v},
        holdout_text=holdout,
        source={"benchmark": "tofu", "config": config,
                "path": str(directory.resolve()) if directory else f"hub:{HUB}"},
        benchmark=BenchmarkData("tofu", config, truth=truth),
    )
