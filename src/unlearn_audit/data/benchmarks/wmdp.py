"""WMDP (Li et al. 2024): multiple-choice questions on hazardous knowledge, and the corpora RMU
unlearns with.

Published layout:

- questions: hub dataset ``cais/wmdp``, configs ``wmdp-bio`` / ``wmdp-cyber`` (/ ``wmdp-chem``),
  split ``test``, fields ``question`` (str), ``choices`` (list of 4 str), ``answer`` (int index);
  the hub stores ``wmdp-bio/test-00000-of-00001.parquet``. A local copy may hold that parquet
  file (needs pyarrow) or ``wmdp-bio.json`` / ``wmdp-bio.jsonl`` with the same fields;
- corpora (optional): ``<domain>-forget-corpus.jsonl`` and ``<domain>-retain-corpus.jsonl``
  (hub ``cais/wmdp-corpora``, split ``train``, field ``text``; the bio forget corpus is gated
  and is only ever read locally). A line that is not a JSON object with ``text`` is taken as
  raw text, and texts of 50 characters or fewer are dropped, as the RMU reference reads them.

Field names and the prompt as in
EleutherAI/lm-evaluation-harness@43468b998f0cc1db09d8dd3a252470cc63728eec:lm_eval/tasks/wmdp/_default_template_yaml;
corpus files as in locuslab/open-unlearning@d3d7cf9e6b3c125d16687d4232680d8d83548f1a:configs/data/datasets/WMDP_forget.yaml.

Mapping to a Target: QA = question -> text of the correct choice, split in seeded halves (RTT
train / held out); forget texts = the forget corpus when present, else the QA lines; retain
texts = the retain corpus when present. The questions themselves go to ``benchmark.mc``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ...errors import UserInputError
from ...files import read_text
from ...world import QA
from .items import BenchmarkData, MCItem
from .source import first_file, hub_rows, need, read_rows

HUB = "cais/wmdp"
HUB_CORPORA = "cais/wmdp-corpora"
DOMAINS = {"bio": "biology", "cyber": "computer security", "chem": "chemistry"}
MIN_CHARS = 50


def description(domain: str) -> str:
    """The lm-eval task's description line for a domain."""
    return f"The following are multiple choice questions (with answers) about {DOMAINS[domain]}.\n\n"


def _questions(domain: str, directory: Path | None) -> list[MCItem]:
    name = f"wmdp-{domain}"
    if directory is None:
        rows = hub_rows(HUB, name, "test")
    else:
        path = first_file(directory, f"{name}/test-*.parquet", f"{name}.json", f"{name}.jsonl",
                          f"{name}/test.json", f"{name}/test.jsonl")
        if path is None:
            raise UserInputError(f"WMDP directory {directory} has no {name}/test-*.parquet, {name}.json "
                                 f"or {name}.jsonl (rows with question, choices, answer)")
        rows = read_rows(path)
    out = []
    for i, r in enumerate(rows):
        need(r, ("question", "choices", "answer"), f"WMDP {name}", i)
        choices = tuple(str(c) for c in r["choices"])
        answer = int(r["answer"])
        if not 0 <= answer < len(choices):
            raise UserInputError(f"WMDP {name} row {i + 1}: answer {answer} is not an index into its "
                                 f"{len(choices)} choices")
        out.append(MCItem(str(r["question"]), choices, answer))
    return out


def _corpus(domain: str, kind: str, directory: Path | None) -> list[str]:
    name = f"{domain}-{kind}-corpus"
    if directory is None:
        if (domain, kind) == ("bio", "forget"):
            return []  # gated: request access and read it from a local copy
        try:
            rows = hub_rows(HUB_CORPORA, name, "train")
        except Exception:
            return []
        texts = [str(r.get("text", "")) for r in rows]
    else:
        path = first_file(directory, f"{name}.jsonl", f"wmdp-corpora/{name}.jsonl")
        if path is None:
            return []
        texts = []
        for line in read_text(path, "benchmark file").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            texts.append(str(row["text"]) if isinstance(row, dict) and "text" in row else line)
    return [t for t in texts if len(t) > MIN_CHARS]


def load_wmdp(config: str, directory: Path | None, seed: int = 0):
    """The Target for ``wmdp:<config>`` (see the module docstring)."""
    from ..target import Target

    if config not in DOMAINS:
        raise UserInputError(f"unknown WMDP split {config!r}; choose one of: {', '.join(DOMAINS)}")
    mc = _questions(config, directory)
    if len(mc) < 2:
        raise UserInputError(f"WMDP {config} has {len(mc)} question(s); it needs at least 2")
    qa = [QA(m.question.strip(), m.choices[m.answer].strip()) for m in mc]
    order = list(range(len(qa)))
    random.Random(seed).shuffle(order)
    held = set(order[: len(order) // 2])
    forget_corpus = _corpus(config, "forget", directory)
    retain_corpus = _corpus(config, "retain", directory)
    return Target(
        name=f"wmdp-{config}",
        forget_text=forget_corpus or [f"{q.question} {q.answer}" for q in qa],
        forget_qa=[q for i, q in enumerate(qa) if i not in held],
        forget_heldout_qa=[q for i, q in enumerate(qa) if i in held],
        retain_text=retain_corpus,
        retain_qa=[],
        source={"benchmark": "wmdp", "config": config,
                "path": str(directory.resolve()) if directory else f"hub:{HUB}",
                "forget_corpus": bool(forget_corpus), "retain_corpus": bool(retain_corpus)},
        benchmark=BenchmarkData("wmdp", config, mc=mc, mc_description=description(config)),
    )
