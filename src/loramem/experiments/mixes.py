"""Q5: combinations of views of the same paper: Original, QA40, Original+QA40, Summary8+QA40, Rewrite4+QA40 and
all mixed, each written into one module per paper and scored on the paper's questions.

The paper (Llama-3.1-8B, GPT-4.1-generated views, GPT-4.1 rubric judge) reports judge scores 3.187, 5.893, 6.300,
6.380, 6.650, 6.822: every mix above QA40 alone, all mixed best. The report sets this run's scores beside them,
with the rank agreement between the two orderings (our judge and generator differ, so absolute values do not
compare; the ordering does). A "Base (no module)" row shows what the model answers without memory.
"""

from __future__ import annotations

from loramem.experiments import docqa
from loramem.report import bar_plot, markdown_table
from loramem.runs.runner import Recipe, RecipeOptions
from loramem.views import PAPER_MIXES

PAPER_JUDGE = {"Original": 3.187, "QA40": 5.893, "Original+QA40": 6.300, "Summary8+QA40": 6.380,
               "Rewrite4+QA40": 6.650, "All mixed": 6.822}
SINGLE = ("Original", "QA40")
BASE = "Base (no module)"


def _mixes(opts: RecipeOptions) -> dict[str, str]:
    """Condition name -> view spec; --mixes may name paper conditions or give specs."""
    given = opts.params.get("mixes")
    if not given:
        return dict(PAPER_MIXES)
    lower = {k.lower(): k for k in PAPER_MIXES}
    return {lower[m.lower()] if m.lower() in lower else m: PAPER_MIXES.get(lower.get(m.lower(), ""), m)
            for m in given}


# Smoke scale keeps the paper's conditions but divides every view count by 4 (QA40 -> qa10, Summary8 -> summary2,
# Rewrite4 -> rewrite1) so the grid fits a CPU in minutes; each row records the spec it really used.
COUNT_SCALE = {"smoke": 0.25, "cpu": 0.5, "paper": 1.0}


def scaled(spec: str, factor: float) -> str:
    """'summary8+qa40' x 0.25 -> 'summary2+qa10' (counts at least 1)."""
    import re

    return re.sub(r"(qa|summary|rewrite)(\d+)", lambda m: f"{m.group(1)}{max(1, round(int(m.group(2)) * factor))}",
                  spec)


def cells(opts: RecipeOptions) -> list[dict]:
    docs = docqa.papers(opts)
    gen = opts.params.get("generator") or "template"
    factor = 1.0 if opts.params.get("mixes") else COUNT_SCALE[opts.scale]
    out = [{"cell": f"{name}-p{d.id}", "mix": name, "views": scaled(spec, factor), "paper": d.id, "generator": gen}
           for name, spec in _mixes(opts).items() for d in docs]
    if opts.params.get("base", True):
        out += [{"cell": f"base-p{d.id}", "mix": BASE, "views": "", "paper": d.id, "generator": gen} for d in docs]
    return out


def run_cell(cell: dict, opts: RecipeOptions) -> dict:
    return run_cells([cell], opts)[0]


def run_cells(cells: list[dict], opts: RecipeOptions) -> list[dict]:
    """Each cell's views, then one module per cell, all trained in one pass over the base; the base-only cell
    (no views) scores the model alone."""
    from loramem.config import GeneratorConfig
    from loramem.generators import make_generator
    from loramem.models import load_base
    from loramem.views import make_views

    base = load_base(opts.model)
    docs = {d.id: d for d in docqa.papers(opts)}
    judge = docqa.judge_for(opts)
    out: dict[int, dict] = {}
    jobs, views = [], []
    for i, cell in enumerate(cells):
        if not cell["views"]:
            out[i] = docqa.score_base(base, docs[cell["paper"]], judge, docqa.answer_tokens(opts))
            continue
        gen = make_generator(GeneratorConfig(kind=cell["generator"], model=opts.model))
        views.append((i, make_views(docs[cell["paper"]], cell["views"], gen, base.tokenizer)))
        jobs.append((docs[cell["paper"]], views[-1][1].rows))
    if jobs:
        for (i, vs), res in zip(views, docqa.write_and_score_many(base, jobs, docqa.writer_config(opts), judge,
                                                                   docqa.answer_tokens(opts)), strict=True):
            out[i] = {**res, "view_records": vs.parts}
    return [out[i] for i in range(len(cells))]


def finding_mixes_beat_single(rows: list[dict], metric: str | None = None) -> tuple[dict | None, dict]:
    """The mixes' mean minus the best single view (Original, QA40; picked by its mean), per question of the same
    paper (judge / 10, else token F1, or `metric`)."""
    from loramem.findings import item_scores, paired_effect

    key = docqa.score_key(rows, metric)
    per = {m: item_scores([r for r in rows if r["mix"] == m], lambda r: r["paper"], key,
                          10.0 if key == "judge" else 1.0)
           for m in dict.fromkeys(r["mix"] for r in rows if r.get("mix") != BASE)}
    per = {m: v for m, v in per.items() if v}
    single = {m: v for m, v in per.items() if m in SINGLE}
    multi = {m: v for m, v in per.items() if m not in SINGLE}
    ev = {"metric": key, "by_mix": {m: round(sum(v.values()) / len(v), 4) for m, v in per.items()}}
    if not single or not multi:
        return None, {**ev, "why": "needs at least one single view and one mix with kept predictions"}
    best = max(single, key=lambda m: ev["by_mix"][m])
    keys = set.intersection(*(set(v) for v in multi.values()))
    mixed = {k: sum(v[k] for v in multi.values()) / len(multi) for k in keys}
    ev["best_single"] = best
    ev["each_mix_minus_best_single"] = {m: paired_effect(v, single[best], arms=(m, best)) for m, v in multi.items()}
    return paired_effect(mixed, single[best], arms=("mean of the mixes", best)), ev


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Rank correlation (average ranks for ties); None below 3 points."""
    if len(xs) < 3:
        return None

    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sx = sum((a - mx) ** 2 for a in rx) ** 0.5
    sy = sum((b - my) ** 2 for b in ry) ** 0.5
    return cov / (sx * sy) if sx and sy else None


def summarize(rows: list[dict], opts: RecipeOptions) -> dict:
    names = list(dict.fromkeys(r["mix"] for r in rows))
    names = [n for n in PAPER_JUDGE if n in names] + [n for n in names if n not in PAPER_JUDGE]
    by_mix, table = {}, []
    for n in names:
        sub = [r for r in rows if r["mix"] == n]
        avg = {k: sum(r.get(k) or 0 for r in sub) / len(sub) for k in docqa.SCORE_KEYS}
        levels = {f"judge_l{lv}": _mean([r.get(f"judge_l{lv}") for r in sub]) for lv in (1, 2, 3)}
        tokens = _mean([r.get("train_tokens") for r in sub])
        by_mix[n] = {**avg, **levels, "paper_judge": PAPER_JUDGE.get(n), "train_tokens": tokens, "papers": len(sub)}
        table.append({"condition": n, "paper (Llama-3.1-8B)": PAPER_JUDGE.get(n, "-"), **by_mix[n]})
    paired = [n for n in PAPER_JUDGE if n in by_mix]
    rho = spearman([by_mix[n]["judge"] for n in paired], [PAPER_JUDGE[n] for n in paired])
    judge = next((r.get("judge_name") for r in rows if r.get("judge_name")), "none")
    cols = ["condition", "paper (Llama-3.1-8B)", "judge", "judge_l1", "judge_l2", "judge_l3", "f1", "rougeL",
            "bleu", "em", "train_tokens", "papers"]
    md = markdown_table(table, cols, fmt={k: ".3f" for k in cols[2:10]} | {"train_tokens": ".0f"})
    from loramem.findings import sentence, verdict_of

    verdict = verdict_of("mixes-beat-single", rows)
    (opts.out / "mixes.md").write_text(
        f"### Q5: view combinations ({opts.model}; judge {judge}, 0-10; paper: GPT-4.1 rubric judge)\n\n{md}\n"
        f"Rank agreement with the paper's ordering (Spearman over {len(paired)} conditions): "
        f"{'-' if rho is None else f'{rho:.3f}'}. Mixes beat the best single view (mean of the mixes minus the "
        f"best single view, paired over questions): {sentence(verdict)}.\n")
    if by_mix:
        # the paper's scores are not drawn beside ours: another judge (GPT-4.1) on another model (Llama-3.1-8B);
        # the table keeps them and the Spearman rank agreement is the comparable number
        names = list(by_mix)
        subs = [[r for r in rows if r["mix"] == n] for n in names]
        bar_plot(opts.out / "mixes.png", names, [by_mix[n]["judge"] for n in names],
                 f"Q5: {judge} judge score per view mix on {opts.model}"
                 + "\n(paper's GPT-4.1 scores on Llama-3.1-8B are not comparable: see the table)",
                 "judge score (0-10)", n=docqa.questions_n(subs, "bar"),
                 intervals=[docqa.pooled_interval(sub, "judge") for sub in subs])
    return {"by_mix": by_mix, "paper_judge": PAPER_JUDGE, "spearman_vs_paper": rho, "judge": judge,
            "mixes_beat_single": verdict}


def _mean(vals: list) -> float | None:
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


RECIPE = Recipe("mixes", "Q5: combinations of synthetic views (the paper's QA40 / Summary8 / Rewrite4 mixes)", cells,
                run_cell, summarize, run_cells=run_cells, together=docqa.together)
