"""Findings verdicts are computed from result rows, not typed in."""

from __future__ import annotations

import statistics

import pytest

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
    assert {findings.label(f) for f in out} == {"not measured"}
    assert {"id", "finding", "recipe", "agrees", "evidence"} <= set(out[0])


def _seeded(rank, size, seed, acc):
    return {"rank": rank, "size_kind": "tokens", "size": size, "train_seed": seed, "size_tokens": size + seed,
            "accuracy": acc, "n_params": 100 * rank, "tau": 0.9}


def test_rank_comparison_is_decided_only_when_the_seeds_agree_beyond_their_spread():
    small = [_seeded(1, 500, s, 1.0) for s in range(3)]
    # rank 4 minus rank 1 at 1500 tokens, per seed: -0.14, +0.04, +0.14 (what one smoke run measured): undecided
    mixed = small + [_seeded(4, 500, s, 1.0) for s in range(3)] + [
        _seeded(1, 1500, 0, 0.20), _seeded(1, 1500, 1, 0.29), _seeded(1, 1500, 2, 0.12),
        _seeded(4, 1500, 0, 0.06), _seeded(4, 1500, 1, 0.33), _seeded(4, 1500, 2, 0.26)]
    v = {f["id"]: f for f in findings.evaluate({"capacity": mixed})}["capacity-saturates"]
    assert v["agrees"] is None and "seeds disagree" in v["evidence"]["why"]
    assert findings.label(v) == "undecided"
    gain = v["evidence"]["rank_4_minus_rank_1"]
    assert gain["ci95"][0] < 0 < gain["ci95"][1] and v["evidence"]["seeds"] == 3
    # the same spread around a clear gain decides it
    clear = small + [_seeded(4, 500, s, 1.0) for s in range(3)] + [
        _seeded(1, 1500, 0, 0.20), _seeded(1, 1500, 1, 0.29), _seeded(1, 1500, 2, 0.12),
        _seeded(4, 1500, 0, 0.60), _seeded(4, 1500, 1, 0.75), _seeded(4, 1500, 2, 0.50)]
    assert {f["id"]: f for f in findings.evaluate({"capacity": clear})}["capacity-saturates"]["agrees"] is True
    worse = small + [_seeded(4, 500, s, 1.0) for s in range(3)] + [
        _seeded(1, 1500, 0, 0.60), _seeded(1, 1500, 1, 0.75), _seeded(1, 1500, 2, 0.50),
        _seeded(4, 1500, 0, 0.20), _seeded(4, 1500, 1, 0.29), _seeded(4, 1500, 2, 0.12)]
    assert {f["id"]: f for f in findings.evaluate({"capacity": worse})}["capacity-saturates"]["agrees"] is False


def test_interval95_uses_student_t():
    m, lo, hi = findings.interval95([0.0, 1.0])
    # t(0.975, 1 dof) = 12.7062; stdev = sqrt(1/2), n = 2 -> half width 12.7062 * 0.5
    assert m == 0.5 and hi - m == pytest.approx(12.7062047 * 0.5) and (m - lo) == pytest.approx(hi - m)
    # 11 dof is between the old table's 10 and 15: scipy gives its own quantile 2.2010, not the table's 2.23
    vals = [float(i % 2) for i in range(12)]
    m, lo, hi = findings.interval95(vals)
    assert hi - m == pytest.approx(2.2009852 * statistics.stdev(vals) / 12 ** 0.5)
    assert findings.interval95([0.3]) == (0.3, 0.3, 0.3)


def test_rank_gain_compares_only_the_sizes_both_ranks_finished():
    # rank 4's 1500-token cells all failed: comparing rank 4's easy size alone with rank 1's two sizes would make
    # rank 4 look better; over the common size both are perfect, so rank 4 does not hold more
    rows = [_seeded(1, 500, s, 1.0) for s in range(3)] + [_seeded(1, 1500, s, a) for s, a in enumerate((.2, .3, .1))]
    rows += [_seeded(4, 500, s, 1.0) for s in range(3)]
    v = {f["id"]: f for f in findings.evaluate({"capacity": rows})}["capacity-saturates"]
    assert v["agrees"] is False and v["evidence"]["rank_4_minus_rank_1"]["by_seed"] == {0: 0.0, 1: 0.0, 2: 0.0}


def test_a_row_from_before_seeds_is_seed_0_and_not_counted_twice():
    from loramem.experiments.capacity import curves

    old = {"rank": 1, "size_kind": "tokens", "size": 500, "size_tokens": 480, "accuracy": 0.0, "n_params": 100}
    rows = [old] + [_seeded(1, 500, s, a) for s, a in enumerate((1.0, 0.5, 0.6))]
    (point,) = curves(rows)[1]
    assert point["by_seed"] == {0: 1.0, 1: 0.5, 2: 0.6} and abs(point["accuracy"] - 0.7) < 1e-9


def test_intervals_are_wilson_for_shares_and_student_t_for_graded_scores():
    from loramem.intervals import interval, share_interval, wilson

    lo, hi = wilson(0, 10)  # the published Wilson bounds: never a zero-width interval at 0
    assert lo == pytest.approx(0.0, abs=1e-9) and hi == pytest.approx(0.2775, abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4) and wilson(3, 0) is None
    assert interval([True] * 5 + [False] * 5) == pytest.approx(wilson(5, 10))
    assert share_interval(0.5, 10) == pytest.approx(wilson(5, 10)) and share_interval(None, 10) is None
    graded = [0.0, 0.5, 1.0, 0.5]
    assert interval(graded) == pytest.approx(findings.interval95(graded)[1:])
    assert interval([0.3]) is None
