"""The capacity planner: how large a memory for N facts? `loramem plan --facts N --tau 0.9 --datasheet DIR`.

From a datasheet's capacity rows (the `capacity` recipe: exact match per rank and knowledge size, mean over
seeds) it takes T_max(rank), the largest size in tokens whose exact match reaches tau, fits the power law
T_max = a * rank^b by least squares in log-log space (with the standard error of b and the residual spread when
three or more ranks reached tau), and plans N facts of the same kind (tokens per fact as the rows measured):

- ranks are powers of two up to the largest measured rank times `max_extrapolation`; a module holds at most the
  largest measured size times that factor, so the fit is never read further out than the factor it prints;
- the plan is the fewest modules that hold N facts within those limits, then the smallest rank for that count;
  more than `max_modules` is refused, since holding N in fewer would need the fit read beyond the factor;
- expected exact match is read off the nearest measured rank's curve at the size with the same fill
  (size / T_max), assuming the curves share their shape across ranks; with several modules it assumes each
  question reaches its module (oracle routing: see the routing recipe for what a real router loses).
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import mean

from loramem.errors import UserError

MAX_EXTRAPOLATION = 2.0
MAX_MODULES = 16  # the paper's largest multi-module setting (16 sectors of its 128K PhoneBook)


def capacity_rows(datasheet: str | Path) -> list[dict]:
    """The finished capacity rows of a datasheet folder (DIR/results.jsonl or DIR/capacity/results.jsonl) or of a
    `bench capacity --out DIR` folder."""
    from loramem.runs.runner import read_rows

    d = Path(datasheet)
    if not d.is_dir():
        raise UserError(f"no datasheet folder at {d}; pass the --out folder of `loramem datasheet` or of "
                        "`loramem bench capacity`")
    rows: dict[str, dict] = {}
    for f in (d / "results.jsonl", d / "capacity" / "results.jsonl"):
        for r in read_rows(f):
            if r.get("recipe") == "capacity" and r.get("status") == "ok":
                rows[r.get("cell", str(len(rows)))] = r  # the same cell in both files counts once
    if not rows:
        raise UserError(f"{d} holds no finished capacity rows; run `loramem bench capacity --out {d}` (or a "
                        "datasheet with the capacity recipe) first")
    return list(rows.values())


def fit_power_law(t_max: dict[int, float]) -> dict:
    """Least squares of log T_max on log rank over the ranks with T_max > 0: a, b, and (3+ ranks) the standard
    error of b and the residual standard deviation in log space."""
    pts = sorted((r, t) for r, t in t_max.items() if t > 0)
    if len(pts) < 2:
        reached = [r for r, _ in pts]
        raise UserError(f"the capacity rows reach tau at {len(pts)} rank(s) {reached}; a fit needs two: rerun "
                        "`loramem bench capacity` with more ranks, smaller sizes or more steps, or lower --tau")
    xs, ys = [math.log(r) for r, _ in pts], [math.log(t) for _, t in pts]
    mx, my = mean(xs), mean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    la = my - b * mx
    out = {"a": math.exp(la), "b": b, "b_se": None, "log_residual_sd": None, "ranks": [r for r, _ in pts],
           "n": len(pts), "mean_log_rank": mx, "sxx": sxx}
    if len(pts) > 2:
        s = math.sqrt(sum((y - la - b * x) ** 2 for x, y in zip(xs, ys, strict=True)) / (len(pts) - 2))
        out.update(b_se=s / math.sqrt(sxx), log_residual_sd=s)
    if b <= 0:
        raise UserError(f"in these capacity rows T_max does not grow with rank (fitted exponent {b:.3f}); a plan "
                        "would mean nothing: rerun `loramem bench capacity` with more steps or seeds")
    return out


def predict(fit: dict, rank: float) -> float:
    return fit["a"] * rank ** fit["b"]


def predict_interval(fit: dict, rank: float) -> list[float] | None:
    """95% prediction interval of T_max at `rank` (None with two ranks: the fit passes through both exactly)."""
    if fit["log_residual_sd"] is None:
        return None
    from scipy import stats

    t = float(stats.t.ppf(0.975, df=fit["n"] - 2))
    x = math.log(rank)
    half = t * fit["log_residual_sd"] * math.sqrt(1 + 1 / fit["n"] + (x - fit["mean_log_rank"]) ** 2 / fit["sxx"])
    mid = math.log(predict(fit, rank))
    return [math.exp(mid - half), math.exp(mid + half)]


def _accuracy_at(points: list[dict], size: float) -> tuple[float, float]:
    """(mean accuracy, seed sd) on one rank's curve at `size` tokens: linear between measured sizes, flat beyond."""
    if size <= points[0]["size_tokens"]:
        return points[0]["accuracy"], points[0]["accuracy_sd"]
    for lo, hi in zip(points, points[1:], strict=False):
        if size <= hi["size_tokens"]:
            w = (size - lo["size_tokens"]) / (hi["size_tokens"] - lo["size_tokens"])
            return (lo["accuracy"] + w * (hi["accuracy"] - lo["accuracy"]),
                    max(lo["accuracy_sd"], hi["accuracy_sd"]))
    return points[-1]["accuracy"], points[-1]["accuracy_sd"]


def plan(rows: list[dict], facts: int, tau: float, max_extrapolation: float = MAX_EXTRAPOLATION,
         max_modules: int = MAX_MODULES) -> dict:
    """Rank, number of modules, expected exact match and parameters for `facts` facts of the rows' kind."""
    from loramem.experiments.capacity import curves, t_max

    if facts < 1:
        raise UserError(f"--facts must be 1 or more, got {facts}")
    if not 0 < tau <= 1:
        raise UserError(f"--tau must be in (0, 1], got {tau}")
    if max_extrapolation < 1:
        raise UserError(f"--max-extrapolation must be 1 or more (1: no extrapolation), got {max_extrapolation}")
    curve = curves(rows)
    measured = {r: t_max(pts, tau) for r, pts in curve.items()}
    fit = fit_power_law(measured)
    per_fact = mean(r["size_tokens"] / r["entries"] for r in rows if r.get("entries"))
    per_rank = mean(r["n_params"] / r["rank"] for r in rows)
    r_min, r_max = min(curve), max(curve)
    s_max = max(p["size_tokens"] for pts in curve.values() for p in pts)
    tokens = facts * per_fact
    ranks = [2 ** k for k in range(0, 13) if r_min / max_extrapolation <= 2 ** k <= r_max * max_extrapolation]
    if not ranks:
        raise UserError(f"no power-of-two rank lies within {max_extrapolation:g}x of the measured ranks "
                        f"{sorted(curve)}; pass a larger --max-extrapolation")
    cap = {r: min(predict(fit, r), s_max * max_extrapolation) for r in ranks}
    modules = math.ceil(tokens / max(cap.values()))
    if modules > max_modules:
        raise UserError(f"{facts} facts ({tokens:,.0f} tokens) need {modules} modules within {max_extrapolation:g}x "
                        f"of what the datasheet measured (ranks up to {r_max}, sizes up to {s_max:,} tokens); "
                        f"measure larger ranks and sizes with `loramem bench capacity`, or pass --max-modules "
                        f"{modules} or a larger --max-extrapolation")
    rank = min(r for r in ranks if cap[r] * modules >= tokens)
    size = tokens / modules
    near = min(curve, key=lambda r: (abs(math.log(r / rank)), -r))
    em, sd = _accuracy_at(curve[near], size * predict(fit, near) / predict(fit, rank))
    return {
        "facts": facts, "tau": tau, "rank": rank, "modules": modules, "facts_per_module": math.ceil(facts / modules),
        "expected_exact_match": round(em, 4), "expected_exact_match_sd": round(sd, 4),
        "expected_from": f"rank {near}'s measured curve at the same fill ({size / predict(fit, rank):.2f} of T_max)"
                         + ("; assumes each question reaches its module (oracle routing)" if modules > 1 else ""),
        "n_params": int(round(per_rank * rank)) * modules, "n_params_per_module": int(round(per_rank * rank)),
        "knowledge_tokens": round(tokens), "tokens_per_fact": round(per_fact, 2),
        "t_max_at_rank": round(predict(fit, rank)), "t_max_interval": _rounded(predict_interval(fit, rank)),
        "fit": {"law": "T_max = a * rank^b", "a": round(fit["a"], 3), "b": round(fit["b"], 4),
                "b_se": _r(fit["b_se"]), "log_residual_sd": _r(fit["log_residual_sd"]), "ranks": fit["ranks"]},
        "measured": {"t_max": {str(r): t for r, t in measured.items()}, "ranks": sorted(curve),
                     "max_size_tokens": s_max, "rows": len(rows)},
        "extrapolation": {"rank": round(max(rank / r_max, r_min / rank), 3), "size": round(size / s_max, 3),
                          "limit": max_extrapolation},
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _rounded(xs: list[float] | None) -> list[int] | None:
    return None if xs is None else [round(x) for x in xs]
