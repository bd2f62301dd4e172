"""Fixtures of the parity suite: two tiny random Llamas (hidden 32, 2 layers) and fixed batches.

Every test in ``tests/parity`` computes a number twice: once with our function and once with
the reference repository's formula, re-derived by hand in the test (never imported, never
copied), on these inputs. The references (owner/repo@commit:path) are cited per test.
"""

from __future__ import annotations

import pytest
from parity_helpers import tiny_llama


@pytest.fixture(scope="module")
def models():
    """(model, reference): two random tiny Llamas, the second playing the frozen original."""
    return tiny_llama(0), tiny_llama(1)
