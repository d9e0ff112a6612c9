"""Q1-Q3: how much a LoRA module stores. Grid of ranks x knowledge sizes on PhoneBook.

Per cell (trained a fixed number of steps or epochs, with early stop once every fact is recalled): exact match on
the trained facts, LoRA parameter count, tokens, bits stored (= correct entries x
log2 of the number space) and bits per parameter. Per rank: T_max(tau) = the largest size with accuracy >= tau,
and Efficiency = T_max / N_params (the paper's metric), set against the published limit of ~2 bits/parameter.
"""

from __future__ import annotations

from collections import defaultdict
from statistics import mean, stdev

from loramem.config import WriterConfig
from loramem.data import phonebook
from loramem.errors import UserError
from loramem.intervals import mean_interval, share_interval
from loramem.report import line_plot, markdown_table
from loramem.runs.runner import Recipe, RecipeOptions, kept_predictions

BITS_PER_PARAM_LIMIT = 2.0  # published knowledge-capacity limit of language models (Allen-Zhu & Li, 2024)

# Writer settings per scale. Like the paper, every cell trains a fixed number of steps whatever its size (early
# stop once all facts are recalled). smoke/cpu put small LoRAs on the top layers so the prefix cache applies and
# the grid fits a CPU; paper is the authors' grid and recipe (ranks 2..1024, 1K..20K tokens) for GPUs.
# (smoke once had a 4000-token size too: both ranks scored 0.00 there in 100 steps, so it only cost time.)
# `seeds` trains every cell that many times, each on a fresh PhoneBook and LoRA init: at smoke scale one seed's
# rank-1 vs rank-4 accuracy on 50 entries swung from -0.14 to +0.14 between seeds, so a single run cannot tell
# which rank stores more; the plots and findings use the mean over seeds and their spread.
SCALES: dict[str, dict] = {
    "smoke": {"ranks": [1, 4], "sizes": [500, 1500], "seeds": 2,
              "writer": {"targets": "all-linear", "layers": "top 3", "lr": 1e-2, "steps": 100, "batch_size": 8,
                         "eval_every": 25}},
    # cpu (see docs/datasheets/cpu-design.md): five ranks so an interior efficiency peak can show, three seeds (the
    # efficiency finding is decided over seeds, Student t: 2 seeds give t = 12.7, 3 give 4.3), trained for epochs,
    # not steps, so every size gets the same passes over its facts, with early stop once every fact is recalled.
    # The first cpu run (top 3 layers, lr 1e-2, 25 epochs) measured the optimizer, not the module: rank 16 held
    # less than rank 1 at every size, and its ablation (lr 2.5e-3, 50 epochs) had every rank hold every size up to
    # 2000 tokens, so T_max lay beyond the grid. Tokens past 4000 cost more than the run's 4 hours, so the module is
    # made smaller instead: the top layer only (rank 1 is 10,176 parameters, rank 16 162,816). A pilot at this
    # setting (one seed, 50 epochs): rank 1 held 0.01 of 2000 tokens and 0.00 of 8000; rank 16 held 0.97 and 0.77,
    # so every rank's curve can cross tau = 0.9 inside 250-4000 tokens. At least 250 steps: 50 epochs of 250
    # tokens (8 entries, one batch) are 50 steps, and in the second run's first sitting ranks 1-4 held less of 250
    # tokens (0.00-0.75) than of 1000 (250 steps): the small sizes measured the step count. 1000 tokens and more
    # already get 250+. The 75 cells share passes over the base.
    "cpu": {"ranks": [1, 2, 4, 8, 16], "sizes": [250, 500, 1000, 2000, 4000], "seeds": 3,
            "writer": {"targets": "all-linear", "layers": "top 1", "lr": 2.5e-3, "epochs": 50, "min_steps": 250,
                       "batch_size": 8}},
    "paper": {"ranks": [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024], "seeds": 1,
              "sizes": [1000, 2000, 4000, 8000, 12000, 16000, 20000],
              "writer": {"recipe": "paper", "targets": "all-linear"}},
}


def _grid(opts: RecipeOptions) -> dict:
    scale = SCALES[opts.scale]
    p = opts.params
    given = {k: v for k, v in p.get("writer", {}).items() if v is not None}
    writer = {**scale["writer"], **given}
    if "epochs" in given:  # epochs given on the command line replace the scale's fixed step count
        writer.pop("steps", None)
    return {"ranks": p.get("ranks") or scale["ranks"], "sizes": p.get("sizes"), "entries": p.get("entries"),
            "paper_sizes": p.get("paper_sizes"), "tau": p.get("tau", 0.9), "writer": writer,
            "default_sizes": scale["sizes"], "seeds": p.get("seeds") or scale["seeds"]}


def budget_ablation(scale: str) -> dict | None:
    """findings.ABLATIONS: the rerun that tests the training budget: a quarter of the learning rate for twice the
    epochs (or steps). With alpha = 2 x rank and Adam, each step moves the update B A further the larger the rank,
    so a step size that suits rank 1 can be too large for rank 16 (the first cpu run, at lr 1e-2: rank 16 held
    less than rank 1 at every size; at a quarter of it every rank held every size). To fit beside the main grid it
    keeps the two lowest ranks and the highest (the saturation finding compares the ends; efficiency needs an
    interior rank), drops the smallest size when there are four or more and the largest when there are five (half
    the tokens), and runs 2 seeds: enough for the saturation finding (decided over facts), while efficiency (decided
    over seeds) may stay undecided. None where the scale's writer names neither (paper: the authors' recipe)."""
    s = SCALES[scale]
    writer = dict(s["writer"])
    budget = [k for k in ("epochs", "steps") if k in writer]
    if not budget or "lr" not in writer:
        return None
    writer[budget[0]] *= 2
    writer["lr"] /= 4
    sizes = s["sizes"][1:-1] if len(s["sizes"]) >= 5 else s["sizes"][1:] if len(s["sizes"]) >= 4 else s["sizes"]
    return {"ranks": sorted(set(s["ranks"][:2] + s["ranks"][-1:])), "sizes": sizes, "seeds": min(2, s["seeds"]),
            "writer": writer}


def cells(opts: RecipeOptions) -> list[dict]:
    g = _grid(opts)
    if g["paper_sizes"]:
        if opts.paper_data is None:
            raise UserError("--paper-sizes needs --paper-data pointing at the paper's release folder")
        sizes = [("paper", s) for s in g["paper_sizes"]]
    elif g["entries"]:
        sizes = [("entries", n) for n in g["entries"]]
    else:
        sizes = [("tokens", s) for s in (g["sizes"] or g["default_sizes"])]
    seeds = [opts.seed + i for i in range(g["seeds"])]
    tag = (lambda s: f"-s{s}") if len(seeds) > 1 else (lambda s: "")  # one seed: the ids earlier runs resume
    return [{"cell": f"r{r}-{kind}{size}{tag(s)}", "rank": r, "size_kind": kind, "size": size, "tau": g["tau"],
             "train_seed": s, "writer": g["writer"]} for r in g["ranks"] for kind, size in sizes for s in seeds]



def _entries(cell: dict, opts: RecipeOptions, tokenizer) -> list[phonebook.Entry]:
    kind, size = cell["size_kind"], cell["size"]
    if kind == "paper":
        return phonebook.read(phonebook.paper_file(str(size), opts.paper_data))
    if kind == "entries":
        return phonebook.generate(int(size), cell["train_seed"])
    return phonebook.generate_tokens(int(size), tokenizer, cell["train_seed"], cell["writer"].get("format", "plain"))


def run_cell(cell: dict, opts: RecipeOptions) -> dict:
    return run_cells([cell], opts)[0]


def run_cells(cells: list[dict], opts: RecipeOptions) -> list[dict]:
    """Cells with one writer setting (ranks, sizes and seeds vary) train in one pass over the base, each its own
    module with its own seed, optimizer and early stop."""
    from loramem.models import load_base
    from loramem.reads import read_items
    from loramem.writer import WriteJob, autocast_for, write_modules

    base = load_base(opts.model)
    jobs, facts = [], []
    for i, cell in enumerate(cells):
        entries = _entries(cell, opts, base.tokenizer)
        writer = dict(cell["writer"])
        cfg = WriterConfig.preset(writer.pop("recipe", "fast"), rank=cell["rank"], seed=cell["train_seed"],
                                  progress=False, **writer)
        jobs.append(WriteJob([e.example() for e in entries], cfg, adapter=f"capacity_cell{i}"))
        facts.append(entries)
    out = []
    for res, job, entries in zip(write_modules(jobs, base), jobs, facts, strict=True):
        res.model.set_adapter(res.adapter)
        reads = read_items(res.model, res.rendered, base.tokenizer.pad_token_id, autocast_for(job.cfg, base.device))
        res.model.delete_adapter(res.adapter)
        rec, n = res.record, len(entries)
        correct = round(rec["exact_match"] * n)
        bits = correct * phonebook.ANSWER_SPACE_BITS
        out.append({
            "size_tokens": rec["knowledge_tokens"], "entries": n, "accuracy": rec["exact_match"],
            "correct": correct, "n_params": rec["n_params"], "bits": round(bits, 1),
            "bits_per_param": bits / rec["n_params"], "steps": rec["steps"], "epochs": rec["epochs"], "layers_resolved": rec.get("layers_resolved"),
            "tokens_seen": rec["tokens_seen"], "stopped": rec["stopped"], "train_s": rec["train_s"],
            "tokens_per_s": rec["tokens_per_s"], "modules_together": rec["modules_together"],
            **fact_predictions(entries, reads, base.tokenizer),
        })
    return out


def together(cell: dict) -> str:
    """Cells with the same writer settings share a pass."""
    import json

    return json.dumps(cell["writer"], sort_keys=True)


def fact_predictions(entries: list[phonebook.Entry], reads, tokenizer) -> dict:
    """Every fact's question, gold number, teacher-forced prediction (the argmax at each answer token, what greedy
    decoding gives when it is right) and exact match, as row fields (runs.runner.kept_predictions)."""
    preds = [{"question": e.question(), "gold": e.number,
              "prediction": tokenizer.decode(r.pred_ids, skip_special_tokens=True).strip(), "exact": r.exact,
              "token_accuracy": round(r.token_accuracy, 4)} for e, r in zip(entries, reads, strict=True)]
    return {**kept_predictions(preds), "predictions_by": "teacher-forced argmax at each answer token"}


def curves(rows: list[dict]) -> dict[int, list[dict]]:
    """Per rank, one point per knowledge size, mean over training seeds, smallest size first.

    Each point: key (size kind and nominal size), size_tokens (mean), accuracy (mean over seeds), accuracy_sd (0 with
    one seed), accuracy_ci (95%: Student t over the seeds, or Wilson over the facts with one seed), by_seed
    {seed: accuracy}, n_params, bits_per_param (best seed). A row without train_seed (a run from before seeds) counts
    as seed 0; of two rows for one size and seed, the later one counts.
    """
    out: dict[int, list[dict]] = {}
    for k in sorted({r["rank"] for r in rows}):
        groups: dict = defaultdict(dict)
        for r in rows:
            if r["rank"] == k:
                key = f"{r['size_kind']}:{r['size']}" if "size_kind" in r else f"tokens:{r['size_tokens']}"
                groups[key][r.get("train_seed", 0)] = r
        points = []
        for key, by_seed in groups.items():
            g = list(by_seed.values())
            accs = [float(r["accuracy"]) for r in g]
            # over seeds a Student t interval of the mean accuracy, kept inside [0, 1]; one seed: Wilson's over facts
            ci = (_clip(mean_interval(accs)[1:]) if len(accs) > 1
                  else share_interval(accs[0], g[0].get("entries")))
            points.append({"key": key, "size_tokens": round(mean(r["size_tokens"] for r in g)),
                           "accuracy": mean(accs), "accuracy_sd": stdev(accs) if len(accs) > 1 else 0.0,
                           "accuracy_ci": ci,
                           "by_seed": {s: float(r["accuracy"]) for s, r in by_seed.items()},
                           "n_params": g[0]["n_params"], "bits_per_param": max(r.get("bits_per_param", 0.0) for r in g),
                           "entries": round(mean(r.get("entries", 0) for r in g))})
        out[k] = sorted(points, key=lambda p: p["size_tokens"])
    return out


def _bits_interval(row: dict) -> tuple[float, float] | None:
    """95% interval of a cell's bits per parameter: Wilson's on its facts right, times the bits of one fact."""
    ci = share_interval(row.get("accuracy"), row.get("entries"))
    if ci is None or not row.get("n_params"):
        return None
    scale = row["entries"] * phonebook.ANSWER_SPACE_BITS / row["n_params"]
    return ci[0] * scale, ci[1] * scale


def _clip(ci: tuple[float, float]) -> tuple[float, float]:
    return max(0.0, ci[0]), min(1.0, ci[1])


def _span(ci: tuple[float, float] | None) -> str:
    return "-" if ci is None else f"{ci[0]:.3f} to {ci[1]:.3f}"


def seeds_run(curve: dict[int, list[dict]]) -> int:
    """How many training seeds the curve's best-covered point has."""
    return max(len(p["by_seed"]) for pts in curve.values() for p in pts)


def t_max(points: list[dict], tau: float) -> int:
    """The largest knowledge size (tokens) whose mean accuracy reaches tau; 0 when none does."""
    return max((p["size_tokens"] for p in points if p["accuracy"] >= tau), default=0)


def t_max_by_seed(curve: dict[int, list[dict]], tau: float) -> dict[int, dict[int, int]]:
    """Per rank, per training seed that finished every point of every rank: that seed's T_max (the largest size
    whose accuracy reaches tau; 0 when none does). What the efficiency finding and its plots read."""
    seeds = sorted(set.intersection(*(set(p["by_seed"]) for pts in curve.values() for p in pts)))
    return {k: {sd: max((p["size_tokens"] for p in pts if p["by_seed"][sd] >= tau), default=0) for sd in seeds}
            for k, pts in curve.items()}


def beyond_grid(curve: dict[int, list[dict]], t_max_of: dict[int, int]) -> list[int]:
    """The ranks whose T_max is the largest size they were tested on: it lies beyond the grid (a lower bound)."""
    return [k for k, pts in curve.items() if t_max_of[k] >= max(p["size_tokens"] for p in pts)]


def rank_gain(curve: dict[int, list[dict]], low: int, high: int) -> dict[int, float]:
    """Per training seed: mean accuracy at rank `high` minus at rank `low`, over the sizes both ranks finished
    (same seed, same PhoneBook); only seeds that finished all of those sizes at both ranks count."""
    keys = {p["key"] for p in curve[low]} & {p["key"] for p in curve[high]}
    if not keys:
        return {}
    pts = {k: [p for p in curve[k] if p["key"] in keys] for k in (low, high)}
    seeds = set.intersection(*(set(p["by_seed"]) for k in (low, high) for p in pts[k]))
    return {s: mean(p["by_seed"][s] for p in pts[high]) - mean(p["by_seed"][s] for p in pts[low])
            for s in sorted(seeds)}


def memory_law(t_max_by_rank: dict[int, float]) -> dict | None:
    """T_max = c * rank^alpha, fitted by least squares on log T_max vs log rank over the ranks that reached tau:
    alpha with its standard error and 95% interval, c, R^2 and the ranks used; None with fewer than three ranks
    (two points always fit a line exactly, so they say nothing about the law's error)."""
    import math

    from scipy import stats

    pts = sorted((k, t) for k, t in t_max_by_rank.items() if t > 0)
    if len(pts) < 3:
        return None
    fit = stats.linregress([math.log(k) for k, _ in pts], [math.log(t) for _, t in pts])
    half = float(stats.t.ppf(0.975, len(pts) - 2)) * fit.stderr
    return {"law": "T_max = c * rank^alpha", "alpha": round(fit.slope, 4), "alpha_stderr": round(fit.stderr, 4),
            "alpha_ci95": [round(fit.slope - half, 4), round(fit.slope + half, 4)],
            "c": round(math.exp(fit.intercept), 2), "r2": round(fit.rvalue**2, 4), "ranks": [k for k, _ in pts]}


def summarize(rows: list[dict], opts: RecipeOptions) -> dict:
    """Per rank T_max and efficiency (on the mean over seeds); plots and Markdown tables under opts.out."""
    out = opts.out
    tau = rows[0]["tau"]
    curve = curves(rows)
    ranks = list(curve)
    n_seeds = seeds_run(curve)
    per_rank = {}
    for k, pts in curve.items():
        tm = t_max(pts, tau)
        per_rank[str(k)] = {"t_max": tm, "n_params": pts[0]["n_params"], "efficiency": tm / pts[0]["n_params"],
                            "max_bits_per_param": max(p["bits_per_param"] for p in pts)}
    facts = sorted({p["entries"] for pts in curve.values() for p in pts})
    facts_n = f"{facts[0]}-{facts[-1]}" if len(facts) > 1 else str(facts[0])
    seeds_n = f" x {n_seeds} seeds" if n_seeds > 1 else ""
    per_point = (f"n = {facts_n} facts per point{seeds_n}"
                 + ("; bars over the seeds" if n_seeds > 1 else ""))
    line_plot(out / "accuracy_vs_size.png",
              {f"rank {k}": ([p["size_tokens"] for p in pts], [p["accuracy"] for p in pts]) for k, pts in curve.items()},
              "PhoneBook exact match vs knowledge size" + (f" (mean of {n_seeds} seeds)" if n_seeds > 1 else ""),
              "knowledge tokens", "exact match", n=per_point, hline=tau, hline_label=f"tau = {tau}",
              intervals={f"rank {k}": [p["accuracy_ci"] for p in pts] for k, pts in curve.items()})
    # T_max and efficiency are thresholds; the efficiency finding reads them per seed, so with several seeds the
    # plots show each seed's T_max (and efficiency) averaged, with a Student t interval over the seeds
    by_seed = t_max_by_seed(curve, tau)
    seeds = sorted(next(iter(by_seed.values()), {}))
    for k, tms in by_seed.items():
        per_rank[str(k)].update(t_max_by_seed=tms,
                                efficiency_by_seed={sd: v / curve[k][0]["n_params"] for sd, v in tms.items()})
    per_rank_n = f"n = {max(len(pts) for pts in curve.values())} sizes{seeds_n} per rank, {facts_n} facts per size"
    for name, key, title, unit in (("tmax_vs_rank.png", "t_max", f"T_max (largest size with accuracy >= {tau})",
                                    "T_max (tokens)"),
                                   ("efficiency_vs_rank.png", "efficiency", "Efficiency = T_max / N_params",
                                    "tokens per parameter")):
        if len(seeds) > 1:
            stats = [mean_interval(list(per_rank[str(k)][f"{key}_by_seed"].values())) for k in ranks]
            sizes = max(len(pts) for pts in curve.values())
            line_plot(out / name, {"mean over seeds": (ranks, [m for m, _, _ in stats])},
                      f"{title} vs rank (each seed's, averaged)", "rank", unit,
                      n=f"n = {len(seeds)} seeds per rank ({sizes} sizes each); t over the seeds",
                      logx=True, y_from_zero=True,
                      intervals={"mean over seeds": [(lo, hi) for _, lo, hi in stats]})
        else:
            line_plot(out / name, {key: (ranks, [per_rank[str(k)][key] for k in ranks])}, f"{title} vs rank", "rank",
                      unit, n=per_rank_n, logx=True, y_from_zero=True)
    best = {k: max((r for r in rows if r["rank"] == k), key=lambda r: r.get("bits_per_param", 0.0)) for k in ranks}
    line_plot(out / "bits_per_param_vs_rank.png",
              {"measured (best cell)": (ranks, [per_rank[str(k)]["max_bits_per_param"] for k in ranks])},
              "Bits stored per LoRA parameter (log scale)", "rank", "bits / parameter",
              n=f"n = {'/'.join(str(best[k].get('entries', '?')) for k in ranks)} facts in each rank's best cell",
              logx=True, logy=True, hline=BITS_PER_PARAM_LIMIT, hline_label="~2 bits/param limit",
              intervals={"measured (best cell)": [_bits_interval(best[k]) for k in ranks]})
    order = sorted(rows, key=lambda r: (r["rank"], r["size_tokens"], r.get("train_seed", 0)))
    seed_col = ["train_seed"] if n_seeds > 1 else []
    table = markdown_table(order, ["rank", "size_tokens", "entries", *seed_col, "accuracy", "n_params", "bits",
                                   "bits_per_param", "steps", "seconds"],
                           fmt={"accuracy": ".3f", "bits_per_param": ".4f"})
    cols = ["rank", "size_tokens", "entries", "train_seed", "accuracy", "correct", "n_params", "bits",
            "bits_per_param", "steps", "tokens_seen", "train_s", "seconds"]
    with (out / "results.csv").open("w", newline="") as f:
        import csv

        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(order)
    per_rank_rows = [{"rank": k, **per_rank[str(k)]} for k in ranks]
    summary_table = markdown_table(per_rank_rows, ["rank", "n_params", "t_max", "efficiency", "max_bits_per_param"],
                                   fmt={"efficiency": ".4f", "max_bits_per_param": ".4f"})
    text = f"### Capacity per rank (tau = {tau}{f', on the mean of {n_seeds} seeds' if n_seeds > 1 else ''})\n\n"
    text += summary_table
    if n_seeds > 1:
        mean_rows = [{"rank": k, "size_tokens": p["size_tokens"], "entries": p["entries"], "seeds": len(p["by_seed"]),
                      "mean_accuracy": p["accuracy"], "sd": p["accuracy_sd"],
                      "ci95": _span(p["accuracy_ci"]),
                      "per_seed": " / ".join(f"{a:.2f}" for _, a in sorted(p["by_seed"].items()))}
                     for k, pts in curve.items() for p in pts]
        text += "\n### Mean over seeds\n\n" + markdown_table(
            mean_rows, ["rank", "size_tokens", "entries", "seeds", "mean_accuracy", "sd", "ci95", "per_seed"],
            fmt={"mean_accuracy": ".3f", "sd": ".3f"})
    (out / "capacity.md").write_text(f"{text}\n### Every cell\n\n{table}")
    best = max(per_rank.values(), key=lambda v: v["efficiency"])
    law = memory_law({k: per_rank[str(k)]["t_max"] for k in ranks})
    beyond = beyond_grid(curve, {k: per_rank[str(k)]["t_max"] for k in ranks})
    if law and beyond:  # those ranks' T_max is a lower bound: the fit says how far the grid reached, not the law
        law["censored_ranks"] = beyond
        law["note"] = f"ranks {beyond} held the largest size: their T_max is beyond the grid, so alpha is biased"
    if law:
        (out / "capacity.md").write_text((out / "capacity.md").read_text() + (
            f"\n### Memory law\n\nT_max = {law['c']} x rank^{law['alpha']} (alpha 95% interval "
            f"{law['alpha_ci95'][0]} to {law['alpha_ci95'][1]}, R^2 {law['r2']}, ranks {law['ranks']}).\n"))
    return {"tau": tau, "seeds": n_seeds, "per_rank": per_rank, "peak_efficiency_rank": next(
        k for k, v in per_rank.items() if v is best), "bits_per_param_limit": BITS_PER_PARAM_LIMIT,
        "memory_law": law or {"why": "needs three or more ranks that reached tau"}}


RECIPE = Recipe("capacity", "Q1-Q3: capacity and efficiency vs rank (PhoneBook)", cells, run_cell, summarize,
                run_cells=run_cells, together=together)
