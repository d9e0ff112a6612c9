"""Hand-made per-question predictions for finding tests: a share right becomes n kept predictions whose first
round(share x n) are right, so two arms on the same n questions differ exactly on the questions between them."""

from __future__ import annotations


def kept(share: float, n: int = 60, key: str = "exact", scale: float = 1.0) -> dict:
    """Row fields: the share as `accuracy` and n per-question predictions scored by `key` (x scale)."""
    k = round(share * n)
    return {"accuracy": share, "predictions": [{"i": i, "question": f"q{i}", key: (scale if i < k else 0.0)}
                                               for i in range(n)]}


def graded(score: float, n: int = 60, key: str = "judge") -> dict:
    """n predictions all graded `score` (e.g. a judge's 0-10)."""
    return {key: score, "predictions": [{"i": i, "question": f"q{i}", key: score} for i in range(n)]}
