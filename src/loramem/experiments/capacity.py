"""Q1-Q3: how much a LoRA module stores. Grid of ranks x knowledge sizes on PhoneBook.

Per cell: exact match on the trained facts, LoRA parameter count, tokens, bits stored (= correct entries x
log2 of the number space) and bits per parameter. Per rank: T_max(tau) = the largest size with accuracy >= tau,
and Efficiency = T_max / N_params (the paper's metric), set against the published limit of ~2 bits/parameter.
"""

from __future__ import annotations

from loramem.config import WriterConfig
from loramem.data import phonebook
from loramem.errors import UserError
from loramem.experiments.runner import Recipe, RecipeOptions
from loramem.report import line_plot, markdown_table

BITS_PER_PARAM_LIMIT = 2.0  # published knowledge-capacity limit of language models (Allen-Zhu & Li, 2024)

# Writer settings per scale. Like the paper, every cell trains a fixed number of steps whatever its size (early
# stop once all facts are recalled). smoke/cpu put small LoRAs on the top layers so the prefix cache applies and
# the grid fits a CPU; paper is the authors' grid and recipe (ranks 2..1024, 1K..20K tokens) for GPUs.
# (smoke once had a 4000-token size too: both ranks scored 0.00 there in 100 steps, so it only cost time.)
SCALES: dict[str, dict] = {
    "smoke": {"ranks": [1, 4], "sizes": [500, 1500],
              "writer": {"targets": "all-linear", "layers": "27-29", "lr": 1e-2, "steps": 100, "batch_size": 8,
                         "eval_every": 25}},
    "cpu": {"ranks": [1, 2, 4, 8, 16], "sizes": [500, 1000, 2000, 4000, 8000],
            "writer": {"targets": "all-linear", "layers": "24-29", "lr": 5e-3, "steps": 400, "batch_size": 16,
                       "eval_every": 50}},
    "paper": {"ranks": [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
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
            "default_sizes": scale["sizes"]}


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
    return [{"cell": f"r{r}-{kind}{size}", "rank": r, "size_kind": kind, "size": size, "tau": g["tau"],
             "writer": g["writer"]} for r in g["ranks"] for kind, size in sizes]


def _entries(cell: dict, opts: RecipeOptions, tokenizer) -> list[phonebook.Entry]:
    kind, size = cell["size_kind"], cell["size"]
    if kind == "paper":
        return phonebook.read(phonebook.paper_file(str(size), opts.paper_data))
    if kind == "entries":
        return phonebook.generate(int(size), opts.seed)
    return phonebook.generate_tokens(int(size), tokenizer, opts.seed, cell["writer"].get("format", "plain"))


def run_cell(cell: dict, opts: RecipeOptions) -> dict:
    from loramem.models import load_base
    from loramem.writer import write_module

    base = load_base(opts.model)
    entries = _entries(cell, opts, base.tokenizer)
    writer = dict(cell["writer"])
    cfg = WriterConfig.recipe(writer.pop("recipe", "fast"), rank=cell["rank"], seed=opts.seed, progress=False,
                              **writer)
    adapter = "capacity_cell"
    res = write_module([e.example() for e in entries], base, cfg, adapter=adapter)
    rec = res.record
    res.model.delete_adapter(adapter)
    correct = round(rec["exact_match"] * len(entries))
    bits = correct * phonebook.ANSWER_SPACE_BITS
    return {
        "size_tokens": rec["knowledge_tokens"], "entries": len(entries), "accuracy": rec["exact_match"],
        "correct": correct, "n_params": rec["n_params"], "bits": round(bits, 1),
        "bits_per_param": bits / rec["n_params"], "steps": rec["steps"], "epochs": rec["epochs"],
        "tokens_seen": rec["tokens_seen"], "stopped": rec["stopped"], "train_s": rec["train_s"],
        "tokens_per_s": rec["tokens_per_s"],
    }


def summarize(rows: list[dict], opts: RecipeOptions) -> dict:
    """Per rank T_max and efficiency; plots and a Markdown table under opts.out."""
    out = opts.out
    tau = rows[0]["tau"]
    ranks = sorted({r["rank"] for r in rows})
    per_rank = {}
    curves = {}
    for k in ranks:
        cells_k = sorted((r for r in rows if r["rank"] == k), key=lambda r: r["size_tokens"])
        ok = [r["size_tokens"] for r in cells_k if r["accuracy"] >= tau]
        t_max = max(ok) if ok else 0
        n_params = cells_k[0]["n_params"]
        per_rank[str(k)] = {"t_max": t_max, "n_params": n_params, "efficiency": t_max / n_params,
                            "max_bits_per_param": max(r["bits_per_param"] for r in cells_k)}
        curves[f"rank {k}"] = ([r["size_tokens"] for r in cells_k], [r["accuracy"] for r in cells_k])
    line_plot(out / "accuracy_vs_size.png", curves, "PhoneBook exact match vs knowledge size",
              "knowledge tokens", "exact match", hline=tau, hline_label=f"tau = {tau}")
    line_plot(out / "tmax_vs_rank.png", {"T_max": (ranks, [per_rank[str(k)]["t_max"] for k in ranks])},
              f"T_max (largest size with accuracy >= {tau}) vs rank", "rank", "T_max (tokens)", logx=True)
    line_plot(out / "efficiency_vs_rank.png",
              {"efficiency": (ranks, [per_rank[str(k)]["efficiency"] for k in ranks])},
              "Efficiency = T_max / N_params vs rank", "rank", "tokens per parameter", logx=True)
    line_plot(out / "bits_per_param_vs_rank.png",
              {"measured (best cell)": (ranks, [per_rank[str(k)]["max_bits_per_param"] for k in ranks])},
              "Bits stored per LoRA parameter", "rank", "bits / parameter", logx=True,
              hline=BITS_PER_PARAM_LIMIT, hline_label="~2 bits/param limit")
    table = markdown_table(sorted(rows, key=lambda r: (r["rank"], r["size_tokens"])),
                           ["rank", "size_tokens", "entries", "accuracy", "n_params", "bits", "bits_per_param",
                            "steps", "seconds"],
                           fmt={"accuracy": ".3f", "bits_per_param": ".4f"})
    cols = ["rank", "size_tokens", "entries", "accuracy", "correct", "n_params", "bits", "bits_per_param", "steps",
            "tokens_seen", "train_s", "seconds"]
    with (out / "results.csv").open("w", newline="") as f:
        import csv

        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(sorted(rows, key=lambda r: (r["rank"], r["size_tokens"])))
    per_rank_rows = [{"rank": k, **per_rank[str(k)]} for k in ranks]
    summary_table = markdown_table(per_rank_rows, ["rank", "n_params", "t_max", "efficiency", "max_bits_per_param"],
                                   fmt={"efficiency": ".4f", "max_bits_per_param": ".4f"})
    (out / "capacity.md").write_text(
        f"### Capacity per rank (tau = {tau})\n\n{summary_table}\n### Every cell\n\n{table}")
    best = max(per_rank.values(), key=lambda v: v["efficiency"])
    return {"tau": tau, "per_rank": per_rank, "peak_efficiency_rank": next(
        k for k, v in per_rank.items() if v is best), "bits_per_param_limit": BITS_PER_PARAM_LIMIT}


RECIPE = Recipe("capacity", "Q1-Q3: capacity and efficiency vs rank (PhoneBook)", cells, run_cell, summarize)
