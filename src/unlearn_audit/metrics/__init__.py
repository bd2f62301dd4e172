"""Metrics: QA accuracy and NLL, likelihoods, perplexity, recovery summaries."""

from .qa import EvalSuite, QAScores, evaluate_qa, score_encoded
from .text import perplexity

__all__ = ["EvalSuite", "QAScores", "evaluate_qa", "perplexity", "score_encoded"]
