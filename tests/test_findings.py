"""Findings verdicts are computed from result rows, not typed in."""

from __future__ import annotations

from loramem import findings


def _cap(rank, size, acc, n_params):
    return {"rank": rank, "size_tokens": size, "accuracy": acc, "n_params": n_params, "tau": 0.9}


def test_capacity_findings_agree_when_rows_show_saturation():
    rows = [_cap(1, 1000, 1.0, 100), _cap(1, 2000, 0.5, 100), _cap(1, 4000, 0.2, 100),
            _cap(4, 1000, 1.0, 400), _cap(4, 2000, 1.0, 400), _cap(4, 4000, 0.6, 400)]
    v = {f["id"]: f for f in findings.evaluate({"capacity": rows})}
    assert v["capacity-saturates"]["agrees"] is True
    # T_max: rank1 = 1000 (eff 10), rank4 = 2000 (eff 5): efficiency peaks at the low rank
    assert v["efficiency-low-rank"]["agrees"] is True
    assert v["efficiency-low-rank"]["evidence"]["peak_rank"] == 1


def test_capacity_findings_disagree_when_rows_contradict():
    rows = [_cap(1, 1000, 0.95, 100), _cap(1, 2000, 0.0, 100),
            _cap(4, 1000, 1.0, 400), _cap(4, 2000, 1.0, 400)]
    v = {f["id"]: f for f in findings.evaluate({"capacity": rows})}
    # rank 4 holds 2000 tokens with 400 params (eff 5) vs rank 1 holds 1000 with 100 (eff 10) -> still low
    assert v["efficiency-low-rank"]["agrees"] is True
    rows_flat = [_cap(1, 1000, 0.3, 100), _cap(1, 2000, 0.3, 100), _cap(4, 1000, 0.3, 400), _cap(4, 2000, 0.3, 400)]
    v = {f["id"]: f for f in findings.evaluate({"capacity": rows_flat})}
    assert v["capacity-saturates"]["agrees"] is False
    assert v["efficiency-low-rank"]["agrees"] is None  # nothing reached tau


def test_every_finding_is_not_measured_without_rows():
    out = findings.evaluate({})
    assert out and all(f["agrees"] is None for f in out)
    assert {"id", "finding", "recipe", "agrees", "evidence"} <= set(out[0])
