"""MUSE (Shi et al. 2024): unlearning news articles (BBC) or books (Harry Potter).

Published layout: hub datasets ``muse-bench/MUSE-News`` / ``muse-bench/MUSE-Books`` with
configs (splits) ``raw`` (``forget``, ``retain1``, ``retain2``, ``holdout``; field ``text``),
``verbmem`` (``forget``; ``prompt``, ``gt``), ``knowmem`` (``forget_qa``, ``retain_qa``,
``forget_qa_icl``, ``retain_qa_icl``; ``question``, ``answer``) and ``privleak`` (``forget``,
``retain``, ``holdout``; ``text``). The reference's ``load_data.py`` writes a local copy as
``<corpus>/<config>/<split>.json`` (a JSON array: of strings for ``raw`` and ``privleak``, of
objects for ``verbmem`` and ``knowmem``); that is the layout read from a directory (the
directory holding ``news/`` and ``books/``, or the corpus directory itself).

Field, config and split names as in swj0419/muse_bench@fcd6651da8bcf34744fb9a1cc69bb856ab3eb277:load_data.py.

Mapping to a Target: forget texts = raw ``forget``; retain texts = raw ``retain1`` (what a
method may use; ``retain2`` is not read); forget QA = knowmem ``forget_qa`` in seeded halves
(RTT train / held out; where a corpus has no knowmem, the VerbMem prefixes as completions);
retain QA = knowmem ``retain_qa``; holdout texts = privleak ``holdout``.
"""

from __future__ import annotations

import random
from pathlib import Path

from ...errors import UserInputError
from ...world import QA
from .items import BenchmarkData, Continuation
from .source import hub_rows, need, read_rows

HUB = {"news": "muse-bench/MUSE-News", "books": "muse-bench/MUSE-Books"}


def _rows(corpus: str, directory: Path | None, config: str, split: str, required: bool) -> list | None:
    if directory is None:
        try:
            rows = hub_rows(HUB[corpus], config, split)
        except Exception:
            if required:
                raise
            return None
        return [r["text"] for r in rows] if config in ("raw", "privleak") else rows
    path = directory / config / f"{split}.json"
    if not path.is_file():
        if required:
            raise UserInputError(f"MUSE directory {directory} has no {config}/{split}.json; a local copy "
                                 f"is what muse_bench's load_data.py writes for {HUB[corpus]}")
        return None
    return read_rows(path)


def _texts(rows: list | None, where: str) -> list[str]:
    out = []
    for i, r in enumerate(rows or []):
        if isinstance(r, dict) and "text" in r:
            r = r["text"]
        if not isinstance(r, str):
            raise UserInputError(f"{where} item {i + 1}: expected a string (a text)")
        out.append(r)
    return out


def _qa(rows: list | None, where: str) -> list[QA]:
    out = []
    for i, r in enumerate(rows or []):
        need(r, ("question", "answer"), where, i)
        out.append(QA(str(r["question"]), str(r["answer"]).strip()))
    return out


def load_muse(config: str, directory: Path | None, seed: int = 0):
    """The Target for ``muse:<config>`` (see the module docstring)."""
    from ..target import Target

    if config not in HUB:
        raise UserInputError(f"unknown MUSE corpus {config!r}; choose one of: {', '.join(HUB)}")
    if directory is not None and (directory / config).is_dir():
        directory = directory / config

    def rows(cfg, split, required=False):
        return _rows(config, directory, cfg, split, required)

    forget_text = _texts(rows("raw", "forget", True), f"MUSE {config} raw/forget")
    retain_text = _texts(rows("raw", "retain1", True), f"MUSE {config} raw/retain1")
    verbmem = []
    for i, r in enumerate(rows("verbmem", "forget") or []):
        need(r, ("prompt", "gt"), f"MUSE {config} verbmem/forget", i)
        verbmem.append(Continuation(str(r["prompt"]), str(r["gt"])))
    knowmem = {k: _qa(rows("knowmem", f"{k}_qa"), f"MUSE {config} knowmem/{k}_qa") for k in ("forget", "retain")}
    icl = {k: _qa(rows("knowmem", f"{k}_qa_icl"), f"MUSE {config} knowmem/{k}_qa_icl") for k in ("forget", "retain")}
    privleak = {k: _texts(rows("privleak", k), f"MUSE {config} privleak/{k}") for k in ("forget", "retain", "holdout")}
    forget_qa = knowmem["forget"] or [QA(c.prompt, c.gt.strip(), "completion") for c in verbmem]
    if len(forget_qa) < 2:
        raise UserInputError(f"MUSE {config} needs knowmem/forget_qa.json or verbmem/forget.json with at "
                             "least 2 items (one to relearn on, one held out)")
    order = list(range(len(forget_qa)))
    random.Random(seed).shuffle(order)
    held = set(order[: len(order) // 2])
    return Target(
        name=f"muse-{config}",
        forget_text=forget_text,
        forget_qa=[q for i, q in enumerate(forget_qa) if i not in held],
        forget_heldout_qa=[q for i, q in enumerate(forget_qa) if i in held],
        retain_text=retain_text,
        retain_qa=knowmem["retain"],
        holdout_text=privleak["holdout"],
        source={"benchmark": "muse", "config": config,
                "path": str(directory.resolve()) if directory else f"hub:{HUB[config]}"},
        benchmark=BenchmarkData("muse", config, verbmem=verbmem,
                                knowmem={k: v for k, v in knowmem.items() if v},
                                knowmem_icl={k: v for k, v in icl.items() if v},
                                privleak={k: v for k, v in privleak.items() if v}),
    )
