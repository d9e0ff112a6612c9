"""The continual recipe's rows -> tables, plots and its three findings (each a paired comparison with a 95%
interval). Pure functions of the rows: rerun the summary on the same results.jsonl and you get the same report."""

from __future__ import annotations

import json
from pathlib import Path

from loramem.report import line_plot, markdown_table

TAU = 0.9  # "replay keeps retention above tau"
INTACT_MARGIN = 0.1  # base knowledge counts as intact when at most this share of the probe provably changed


def _main_rank(rows: list[dict]) -> int:
    """The rank every strategy ran at (the probe ranks ran append-replay only): the rows' `main_rank`, or for rows
    written before they carried it, the rank most strategies ran at, the middle one where they tie (a rerun of
    append-replay alone runs the probe ranks, one below the main rank and one above, beside it)."""
    named = {r["main_rank"] for r in rows if r.get("main_rank") is not None}
    if len(named) == 1:
        return named.pop()
    by = {}
    for r in rows:
        by.setdefault(r["rank"], set()).add(r["strategy"])
    most = max(len(v) for v in by.values())
    tied = sorted(k for k, v in by.items() if len(v) == most)
    return tied[len(tied) // 2]


def series(rows: list[dict], dataset: str, strategy: str, rank: int) -> list[dict]:
    """One bank's rows, by round (the latest row of a round that ran twice)."""
    got = {r["round"]: r for r in rows if (r["dataset"], r["strategy"], r["rank"]) == (dataset, strategy, rank)}
    return [got[k] for k in sorted(got)]


def _paired(a: str, b: str) -> dict:
    """Mean of a_i - b_i over the facts both rows hold (hit strings in first-written order), with its 95% t
    interval."""
    from loramem.findings import interval95

    n = min(len(a), len(b))
    d = [int(x) - int(y) for x, y in zip(a[:n], b[:n], strict=True)]
    m, lo, hi = interval95(d) if len(d) > 1 else (0.0, 0.0, 0.0)
    return {"mean": round(m, 4), "ci95": [round(lo, 4), round(hi, 4)], "n": n}


def _bars(rows: list[dict], key: str, ci: str | None = None, flip: bool = False) -> list[tuple[float, float]]:
    """The rows' 95% Wilson intervals (lo, hi) for `key`; `flip` for a plot of 1 - key."""
    spans = [tuple(r[ci or f"{key}_ci"]) for r in rows]
    return [(1 - hi, 1 - lo) for lo, hi in spans] if flip else spans


def summarize(rows: list[dict], opts) -> dict:
    out = Path(opts.out)
    rank = _main_rank(rows)
    datasets = sorted({r["dataset"] for r in rows})
    strategies = [s for s in ("append-replay", "append-no-replay", "new-module", "consolidate")
                  if any(r["strategy"] == s for r in rows)]
    for d in datasets:
        runs = {s: series(rows, d, s, rank) for s in strategies if series(rows, d, s, rank)}
        n = max(r["n_facts"] for rs in runs.values() for r in rs)
        line_plot(out / f"retention_vs_round_{d}.png",
                  {s: ([r["round"] for r in rs], [r["retention"] for r in rs]) for s, rs in runs.items()},
                  f"{d}: retention vs round (95% Wilson)", "round",
                  "retention", n=f"n = up to {n} facts per point", intervals={s: _bars(rs, "retention") for s, rs in runs.items()},
                  integer_x=True, y_from_zero=True, hline=TAU, hline_label=f"tau = {TAU}")
        fixed = {s: [r for r in rs if r.get("old_value_rate") is not None] for s, rs in runs.items()}
        if any(fixed.values()):
            m = max(r["n_corrected"] for rs in fixed.values() for r in rs)
            line_plot(out / f"old_value_vs_round_{d}.png",
                      {s: ([r["round"] for r in rs], [r["old_value_rate"] for r in rs]) for s, rs in fixed.items() if rs},
                      f"{d}: old value still given (95% Wilson)", "round",
                      "old value given", n=f"n = up to {m} corrected facts per point", intervals={s: _bars(rs, "old_value_rate", "old_value_ci") for s, rs in fixed.items() if rs},
                      integer_x=True, y_from_zero=True)
    probe = sorted((r for r in rows if (r["dataset"], r["strategy"]) == ("phonebook", "append-replay")
                    and r["round"] == r["rounds"]), key=lambda r: r["rank"])
    if probe:
        n_probes = probe[0]["n_probes"]
        line_plot(out / "base_forgetting_vs_rank.png",
                  {"append-replay": ([r["rank"] for r in probe], [1 - r["base_probe"] for r in probe])},
                  f"base answers changed after {probe[0]['rounds']} rounds (95% Wilson)", "rank",
                  "share of probe answers changed", logx=True, y_from_zero=True, n=f"n = {n_probes} probes per point",
                  intervals={"append-replay": _bars(probe, "base_probe", flip=True)})
    cols = ["dataset", "strategy", "rank", "round", "n_facts", "retention", "latest", "retention_oracle",
            "routing_accuracy", "old_value_rate", "base_probe", "modules", "n_params", "train_s", "train_s_total"]
    order = sorted(rows, key=lambda r: (r["dataset"], r["strategy"], r["rank"], r["round"]))
    fmt = {c: ".3f" for c in ("retention", "latest", "retention_oracle", "routing_accuracy", "old_value_rate",
                              "base_probe")}
    (out / "continual.md").write_text("### Continual memory: every round, every strategy\n\n"
                                      + markdown_table(order, cols, fmt=fmt))
    from loramem.findings import verdict_of

    verdicts = [verdict_of(fid, rows) for fid, *_ in FINDINGS]
    (out / "findings.json").write_text(json.dumps(verdicts, indent=2, default=str))
    final = {f"{d}/{s}": series(rows, d, s, rank)[-1] for d in datasets for s in strategies
             if series(rows, d, s, rank)}
    return {"rank": rank, "final": {k: {c: r.get(c) for c in ("round", "retention", "retention_ci", "latest",
                                                               "old_value_rate", "base_probe", "modules",
                                                               "n_params", "train_s_total")}
                                    for k, r in final.items()},
            "findings": {v["id"]: v["agrees"] for v in verdicts}}


def _pick(rows: list[dict], strategy: str) -> tuple[str, int, list[dict]]:
    rank = _main_rank(rows)
    for d in ("phonebook", "corrections"):
        rs = series(rows, d, strategy, rank)
        if rs:
            return d, rank, rs
    return "", rank, []


def finding_replay_keeps(rows: list[dict]) -> tuple[dict | None, dict]:
    """Append with replay keeps retention above tau in every round: the worst round's retention minus tau, with its
    Wilson interval; the paired gain over no replay is evidence."""
    d, rank, rs = _pick(rows, "append-replay")
    if len(rs) < 2:
        return None, {"why": "needs the append-replay rows of two rounds or more"}
    ev = {"dataset": d, "rank": rank, "tau": TAU, "rounds": len(rs),
          "retention_by_round": {r["round"]: {"mean": round(r["retention"], 4), "ci95": r["retention_ci"],
                                              "n": r["n_facts"]} for r in rs}}
    plain = series(rows, d, "append-no-replay", rank)
    if plain and plain[-1]["round"] == rs[-1]["round"]:
        ev["replay_minus_no_replay_last_round"] = _paired(rs[-1]["hits"], plain[-1]["hits"])
    worst = min(rs, key=lambda r: r["retention"])
    return _shifted(worst["retention"], worst["retention_ci"], TAU, worst["n_facts"]), ev


def _shifted(value: float, ci, by: float, n: int) -> dict:
    """A share measured against a threshold: value - by with its interval (positive: above the threshold)."""
    return {"effect": round(value - by, 4), "ci_low": round(ci[0] - by, 4), "ci_high": round(ci[1] - by, 4),
            "n": n, "clusters": 1, "arms": ["measured", "threshold"]}


def finding_new_module_routing(rows: list[dict]) -> tuple[dict | None, dict]:
    """A module per round keeps each module's facts (oracle retention) while the embed router's errors grow:
    decided on the paired change in routing accuracy of the round-2 facts from round 2 to the last round."""
    d, rank, rs = _pick(rows, "new-module")
    if len(rs) < 3:
        return None, {"why": "needs the new-module rows of three rounds or more (round 1 has one module)"}
    second, last = rs[1], rs[-1]
    growth = _paired(second["routed"], last["routed"])  # > 0: the same facts are routed worse later
    ev = {"dataset": d, "rank": rank, "routing_error_growth": growth,
          "routing_accuracy_by_round": {r["round"]: {"mean": round(r["routing_accuracy"], 4),
                                                     "ci95": r["routing_ci"], "modules": r["modules"]} for r in rs},
          "retention_oracle_by_round": {r["round"]: round(r["retention_oracle"], 4) for r in rs},
          "retention_by_round": {r["round"]: round(r["retention"], 4) for r in rs}}
    for other in ("phonebook", "corrections"):
        more = series(rows, other, "new-module", rank)
        if other != d and len(more) >= 3:
            ev[f"{other}_routing_error_growth"] = _paired(more[1]["routed"], more[-1]["routed"])
    lo, hi = growth["ci95"]
    return {"effect": growth["mean"], "ci_low": lo, "ci_high": hi, "n": growth["n"], "clusters": 1,
            "arms": [f"round {second['round']}", f"round {last['round']}"]}, ev


def finding_base_intact(rows: list[dict]) -> tuple[dict | None, dict]:
    """At the lowest rank run, after the last round, the share of the general-knowledge probe whose greedy answer
    changed from the base model's is at most INTACT_MARGIN: the effect is INTACT_MARGIN minus that share (positive:
    intact), with its Wilson interval."""
    last = [r for r in rows if (r["dataset"], r["strategy"]) == ("phonebook", "append-replay")
            and r["round"] == r["rounds"]]
    if not last:
        return None, {"why": "needs the last round of phonebook append-replay"}
    low = min(last, key=lambda r: r["rank"])
    lo, hi = low["base_probe_ci"]
    changed = {"mean": round(1 - low["base_probe"], 4), "ci95": [round(1 - hi, 4), round(1 - lo, 4)],
               "n": low["n_probes"]}
    ev = {"rank": low["rank"], "rounds": low["rounds"], "changed": changed, "margin": INTACT_MARGIN,
          "changed_by_rank": {r["rank"]: round(1 - r["base_probe"], 4) for r in sorted(last, key=lambda r: r["rank"])}}
    return _shifted(INTACT_MARGIN - changed["mean"], [INTACT_MARGIN - changed["ci95"][1],
                                                      INTACT_MARGIN - changed["ci95"][0]], 0.0, low["n_probes"]), ev


# (id, statement, check, what the effect is, no-effect margin, fewest items that decide)
FINDINGS = [
    ("continual-replay-keeps", f"(beyond the paper) Replay keeps retention above tau = {TAU} over k update rounds",
     finding_replay_keeps, f"retention of the worst round minus tau = {TAU}", 0.0, 10),
    ("continual-new-module-routing", "(beyond the paper) A new module per round keeps its facts, but routing "
     "errors grow with rounds", finding_new_module_routing,
     "routing accuracy of round 2's facts at round 2 minus at the last round", 0.02, 10),
    ("continual-base-intact", "(beyond the paper) LoRA writes leave the base model's own knowledge intact at low "
     "rank", finding_base_intact, f"{INTACT_MARGIN} minus the share of base probes whose answer changed", 0.0, 10),
]
