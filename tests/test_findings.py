"""Findings verdicts are computed from result rows, not typed in."""

from __future__ import annotations

import statistics

import pytest

from loramem import findings


def _cap(rank, size, acc, n_params, seed=0):
    return {"rank": rank, "size_kind": "tokens", "size": size, "train_seed": seed, "size_tokens": size,
            "accuracy": acc, "n_params": n_params, "tau": 0.9}


def _facts(system: str, right: list[int], **more) -> dict:
    """A multi-lora row whose kept predictions are right (1) or wrong (0) per fact, in order."""
    return {"system": system, "accuracy": sum(right) / len(right), **more,
            "predictions": [{"i": i, "question": f"q{i}", "exact": bool(x)} for i, x in enumerate(right)]}


def _oracle_vs_single(multi: list[int], single: list[int]) -> dict:
    rows = [_facts("multi-oracle", multi), _facts("single", single)]
    return {f["id"]: f for f in findings.evaluate({"multi-lora": rows})}["oracle-multi-beats-single"]


def test_decide_reads_the_interval_against_zero_and_the_declared_margin():
    assert findings.decide(0.05, 0.20, 0.02) == "agrees"
    assert findings.decide(-0.20, -0.05, 0.02) == "disagrees"
    assert findings.decide(-0.01, 0.015, 0.02) == "disagrees"  # inside the margin: a measured "no effect"
    assert findings.decide(-0.10, 0.15, 0.02) == "undecided"
    assert findings.decide(0.0, 0.0, 0.0) == "disagrees"


def test_a_clear_effect_agrees_noise_stays_undecided_and_reversed_or_null_effects_disagree():
    clear = _oracle_vs_single([1] * 40 + [0] * 10, [1] * 10 + [0] * 40)
    assert clear["verdict"] == "agrees" and clear["agrees"] is True
    assert clear["effect"] == 0.6 and 0 < clear["ci_low"] < 0.6 < clear["ci_high"] and clear["n"] == 50
    noise = _oracle_vs_single([1] * 10 + [0] * 10 + [0] * 30, [0] * 10 + [1] * 10 + [0] * 30)
    assert noise["verdict"] == "undecided" and noise["agrees"] is None
    assert noise["ci_low"] < 0 < noise["ci_high"] and "interval" in noise["evidence"]["why"]
    # its power calculation: a null effect must shrink the interval inside the margin, which takes many items
    assert noise["n_to_decide"] > 10 * noise["n"]
    small = _oracle_vs_single([1] * 12 + [0] * 38, [1] * 6 + [0] * 44)  # +0.12, interval holding 0 at n = 50
    if small["verdict"] == "undecided":
        assert small["n"] < small["n_to_decide"] < 20 * small["n"]
    reversed_ = _oracle_vs_single([1] * 10 + [0] * 40, [1] * 40 + [0] * 10)
    assert reversed_["verdict"] == "disagrees" and reversed_["agrees"] is False and reversed_["ci_high"] < 0
    # 400 facts, the arms differ on 2: an effect measured to lie inside the margin of 0.02 is "no effect"
    null = _oracle_vs_single([1] * 2 + [0] * 398, [0] * 400)
    assert null["verdict"] == "disagrees" and 0 <= null["ci_low"] and null["ci_high"] <= null["margin"]
    few = _oracle_vs_single([1] * 4, [0] * 4)  # fewer items than the finding's min_n decide nothing
    assert few["verdict"] == "undecided" and few["effect"] == 1.0


def test_the_bootstrap_draws_clusters_first_so_seed_spread_widens_the_interval():
    from loramem.intervals import paired_bootstrap

    diffs = [1.0] * 30 + [0.0] * 30  # seed a gains on every item, seed b on none
    flat = paired_bootstrap(diffs)
    two = paired_bootstrap(diffs, ["a"] * 30 + ["b"] * 30)
    assert flat[0] == two[0] == 0.5 and (two[2] - two[1]) > 2 * (flat[2] - flat[1])


def test_capacity_saturates_on_the_same_facts_and_is_undecided_where_the_grid_never_saturates():
    rows = [_cap(1, 1000, 1.0, 100), _cap(1, 2000, 0.5, 100), _cap(1, 4000, 0.2, 100),
            _cap(4, 1000, 1.0, 400), _cap(4, 2000, 1.0, 400), _cap(4, 4000, 0.6, 400)]
    for seed in (1, 2):  # three seeds, the same pattern: cells are the items (no kept predictions)
        rows += [{**r, "train_seed": seed, "accuracy": min(1.0, r["accuracy"] + 0.05 * seed)} for r in rows[:6]]
    v = {f["id"]: f for f in findings.evaluate({"capacity": rows})}["capacity-saturates"]
    assert v["verdict"] == "agrees" and v["ci_low"] > 0 and v["n"] == 9 and v["clusters"] == 3
    flat = [_cap(k, s, 0.3, 100 * k) for k in (1, 4) for s in (1000, 2000)]
    v = {f["id"]: f for f in findings.evaluate({"capacity": flat})}["capacity-saturates"]
    assert v["verdict"] == "undecided" and "does not reach capacity" in v["evidence"]["why"]


def test_efficiency_finding_can_come_out_either_way_and_needs_three_ranks():
    def grid(tmax: dict) -> list[dict]:  # each rank recalls every size up to its T_max
        return [_cap(k, s, 1.0 if s <= t else 0.0, 100 * k, seed)
                for seed in range(3) for k, t in tmax.items() for s in (500, 1000, 2000, 4000, 8000, 16000)]

    peak = {f["id"]: f for f in findings.evaluate({"capacity": grid({1: 500, 2: 4000, 8: 8000})})}
    assert peak["efficiency-low-rank"]["verdict"] == "agrees"  # eff: 5, 20, 10 -> the interior rank 2 leads
    lowest = {f["id"]: f for f in findings.evaluate({"capacity": grid({1: 2000, 2: 2000, 8: 4000})})}
    assert lowest["efficiency-low-rank"]["verdict"] == "disagrees"  # eff: 20, 10, 5: monotonic, lowest rank wins
    two = {f["id"]: f for f in findings.evaluate({"capacity": grid({1: 500, 8: 8000})})}
    assert two["efficiency-low-rank"]["verdict"] == "undecided"
    assert "three ranks" in two["efficiency-low-rank"]["evidence"]["why"]
    # every rank held the largest size (as in the cpu run's budget ablation): T_max is only a lower bound, and
    # equal bounds would always favour the rank with the fewest parameters
    beyond = {f["id"]: f for f in findings.evaluate({"capacity": grid({1: 16000, 2: 16000, 8: 16000})})}
    assert beyond["efficiency-low-rank"]["verdict"] == "undecided"
    assert "beyond the grid" in beyond["efficiency-low-rank"]["evidence"]["why"]


def test_every_finding_is_not_measured_without_rows_and_has_the_fields_outside_checks_read():
    out = findings.evaluate({})
    assert out and all(f["agrees"] is None for f in out)
    assert {findings.label(f) for f in out} == {"not measured"} == {f["verdict"] for f in out}
    assert {"name", "verdict", "agrees", "effect", "ci_low", "ci_high", "margin", "n"} <= set(out[0])
    assert all(f["margin"] >= 0 for f in out)


def test_every_delegated_check_is_importable():
    """A finding whose check module was renamed is never silently 'not available' (qa-beats-raw once was)."""
    out = findings.evaluate({f.recipe: [{}] for f in findings.FINDINGS})
    assert not [f["id"] for f in out if "not available" in str(f["evidence"].get("why", ""))]


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
    assert v["verdict"] == "undecided" and v["ci_low"] < 0 < v["ci_high"] and v["clusters"] == 3
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
    # rank 4 look better; over the common size both are perfect: a zero effect on 3 cells
    rows = [_seeded(1, 500, s, 1.0) for s in range(3)] + [_seeded(1, 1500, s, a) for s, a in enumerate((.2, .3, .1))]
    rows += [_seeded(4, 500, s, 1.0) for s in range(3)]
    v = {f["id"]: f for f in findings.evaluate({"capacity": rows})}["capacity-saturates"]
    assert v["effect"] == 0.0 and v["n"] == 3 and v["verdict"] == "undecided"  # 3 cells: fewer than min_n


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


def test_the_memory_law_says_when_a_rank_held_the_whole_grid(tmp_path):
    from loramem.experiments import capacity
    from loramem.runs.runner import RecipeOptions

    rows = [{**_cap(k, s, 1.0 if s <= t else 0.0, 100 * k, seed), "entries": s // 27, "bits": 1.0, "cell": f"{k}-{s}",
             "status": "ok", "seconds": 1.0}
            for seed in range(3) for k, t in {1: 1000, 2: 2000, 4: 4000}.items() for s in (500, 1000, 2000, 4000)]
    law = capacity.summarize(rows, RecipeOptions(model="tiny-random", out=tmp_path))["memory_law"]
    assert law["censored_ranks"] == [4] and "beyond the grid" in law["note"]
