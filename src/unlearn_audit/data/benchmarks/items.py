"""The benchmark-specific items a :class:`~unlearn_audit.data.target.Target` may carry.

Plain data (no torch): what TOFU, WMDP and MUSE evaluate that a question/answer pair cannot
hold — TOFU's paraphrased and perturbed answers, WMDP's multiple-choice options, MUSE's
verbatim-memorisation prefixes, its few-shot knowledge QA and its membership-inference texts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...world import QA


@dataclass(frozen=True)
class TruthItem:
    """A TOFU evaluation row: the question, its answer, a paraphrase of the answer (the answer
    itself where the set has none: real authors, world facts) and the perturbed (wrong but
    plausible) answers."""

    question: str
    answer: str
    paraphrased: str
    perturbed: tuple[str, ...]


@dataclass(frozen=True)
class MCItem:
    """A multiple-choice question (WMDP): ``choices[answer]`` is correct."""

    question: str
    choices: tuple[str, ...]
    answer: int


@dataclass(frozen=True)
class Continuation:
    """A MUSE VerbMem row: a prefix of a forget text and its true continuation."""

    prompt: str
    gt: str


@dataclass
class BenchmarkData:
    """What one benchmark target evaluates beyond its QA sets.

    ``benchmark`` is ``tofu``, ``wmdp`` or ``muse``; ``config`` the split (``forget10``,
    ``bio``, ``news``). Only the fields of that benchmark are filled.
    """

    benchmark: str
    config: str
    truth: dict[str, list[TruthItem]] = field(default_factory=dict)  # TOFU: forget, retain, real_authors, world_facts
    mc: list[MCItem] = field(default_factory=list)                   # WMDP
    mc_description: str = ""                                         # WMDP: the prompt's first line(s)
    verbmem: list[Continuation] = field(default_factory=list)        # MUSE
    knowmem: dict[str, list[QA]] = field(default_factory=dict)       # MUSE: forget, retain
    knowmem_icl: dict[str, list[QA]] = field(default_factory=dict)   # MUSE: few-shot examples per set
    privleak: dict[str, list[str]] = field(default_factory=dict)     # MUSE: forget, retain, holdout texts

    def summary(self) -> dict[str, int]:
        out = {f"truth_{k}": len(v) for k, v in self.truth.items()}
        if self.mc:
            out["mc"] = len(self.mc)
        if self.verbmem:
            out["verbmem"] = len(self.verbmem)
        out.update({f"knowmem_{k}": len(v) for k, v in self.knowmem.items()})
        out.update({f"privleak_{k}": len(v) for k, v in self.privleak.items()})
        return out
