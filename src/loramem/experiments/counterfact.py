"""CounterFact editing: train counterfactual edits into LoRA modules across ranks and sizes.

Per cell (rank x size): efficacy (the new object is more likely than the old one after the edit), generation
accuracy (greedy continuation starts with the new object), locality (unrelated prompts keep their answers;
ROME neighborhood prompts keep the true object) and the cost on knowledge the base model already had (facts it
answered right before the edit that it still answers right), plus module size and training time.

With the paper's files the old object is what the base model answered before the edit (the release has no true
objects); with ROME's counterfact.json (`--data`) it is the true object.
"""

from __future__ import annotations

from pathlib import Path

from loramem.config import WriterConfig
from loramem.data import counterfact as cf
from loramem.errors import UserError
from loramem.experiments.context_tasks import release_dir
from loramem.intervals import share_interval
from loramem.report import line_plot, markdown_table
from loramem.runs.runner import Recipe, RecipeOptions, kept_predictions

ADAPTER = "cf_edit"

# Raw-text edits: a sentence cannot be predicted from its first token, so no exact-match early stop (target_em
# None) and a fixed number of epochs. smoke/cpu put LoRA on the upper layers (prefix cache) to fit a CPU.
SCALES: dict[str, dict] = {
    "smoke": {"ranks": [4], "sizes": ["1K"], "max_probes": 40,
              "writer": {"targets": "all-linear", "layers": "top 6", "lr": 5e-3, "epochs": 12, "batch_size": 16,
                         "target_em": None}},
    # cpu: a side result (no finding reads it), so two ranks and two sizes (~10 min of one core)
    "cpu": {"ranks": [4, 16], "sizes": ["1K", "2K"], "max_probes": None,
            "writer": {"targets": "all-linear", "layers": "top 6", "lr": 5e-3, "epochs": 12, "batch_size": 16,
                       "target_em": None}},
    "paper": {"ranks": [4, 16, 64, 256], "sizes": ["1K", "5K", "10K", "20K"], "max_probes": None,
              "writer": {"targets": "all-linear", "lr": 1e-3, "epochs": 20, "batch_size": 8, "target_em": None}},
}


def cells(opts: RecipeOptions) -> list[dict]:
    scale = SCALES[opts.scale]
    p = opts.params
    writer = {**scale["writer"], **{k: v for k, v in p.get("writer", {}).items() if v is not None}}
    if p.get("writer", {}).get("steps") is not None:
        writer.pop("epochs", None)
    data = p.get("data")
    if data is None and release_dir(opts) is None:
        raise UserError("CounterFact needs the paper's files (--paper-data DIR) or ROME's counterfact.json (--data)")
    sizes = [s.upper() for s in (p.get("sizes") or scale["sizes"])] if data is None else [str(p.get("limit") or "all")]
    max_probes = p.get("max_probes", scale["max_probes"])
    return [{"cell": f"r{r}-{s}", "rank": r, "size": s, "data": str(data) if data else None,
             "max_probes": max_probes, "writer": writer} for r in (p.get("ranks") or scale["ranks"]) for s in sizes]


def edit_set(cell: dict, opts: RecipeOptions) -> cf.EditSet:
    if cell["data"]:
        limit = None if cell["size"] == "all" else int(cell["size"])
        return cf.load_rome(cell["data"], limit)
    return cf.load_paper(cell["size"], release_dir(opts))


def probe_model(model, base, probes: list[cf.Probe], olds: list[str]) -> dict:
    """Log-probs of new and old objects and greedy continuations for probes; known-fact continuations."""
    from loramem.evaluate import generate_answers
    from loramem.formats import Example
    from loramem.likelihood import answer_logprobs

    prompts = [p.prompt for p in probes]
    gens = generate_answers(model, base, [Example(p.prompt, p.new) for p in probes], "plain", max_new_tokens=8)
    known = generate_answers(model, base, [Example(q, a) for q, a in cf.KNOWN_FACTS], "plain", max_new_tokens=8)
    return {"lp_new": answer_logprobs(model, base, prompts, [p.new for p in probes]),
            "lp_old": answer_logprobs(model, base, prompts, olds) if olds else [],
            "gen": gens, "known": known}


def measure(before: dict, after: dict, probes: list[cf.Probe], olds: list[str]) -> dict:
    """Editing metrics from probe results before and after the edit (pure: no model)."""
    from loramem.evaluate import normalize
    from loramem.likelihood import efficacy, starts_with_answer

    def eff(res: dict, kind: str, flip: bool = False) -> float | None:
        idx = [i for i, p in enumerate(probes) if p.kind == kind and normalize(olds[i]) != normalize(p.new)]
        if not idx:
            return None
        new, old = [res["lp_new"][i] for i in idx], [res["lp_old"][i] for i in idx]
        return efficacy(old, new) if flip else efficacy(new, old)

    rw = [i for i, p in enumerate(probes) if p.kind == "rewrite"]
    gen_acc = lambda res: sum(starts_with_answer(res["gen"][i], probes[i].new) for i in rw) / len(rw)  # noqa: E731
    known_ok = [i for i, (_, a) in enumerate(cf.KNOWN_FACTS) if starts_with_answer(before["known"][i], a)]
    retained = sum(starts_with_answer(after["known"][i], cf.KNOWN_FACTS[i][1]) for i in known_ok)
    unchanged = sum(normalize(a) == normalize(b) for a, b in zip(before["known"], after["known"], strict=True))
    return {
        "efficacy": eff(after, "rewrite"), "efficacy_before": eff(before, "rewrite"),
        "paraphrase_efficacy": eff(after, "paraphrase"),
        "neighborhood_locality": eff(after, "neighborhood", flip=True),
        "generation_accuracy": gen_acc(after), "generation_accuracy_before": gen_acc(before),
        "unrelated_unchanged": unchanged / len(cf.KNOWN_FACTS),
        "known_before": len(known_ok), "known_retained": retained / len(known_ok) if known_ok else None,
        "n_probes": len(rw), "n_compared": sum(1 for i in rw if normalize(olds[i]) != normalize(probes[i].new)),
    }


_BEFORE: dict[tuple, tuple[dict, list[str]]] = {}


def baseline(base, probes: list[cf.Probe]) -> tuple[dict, list[str]]:
    """Base-model probe results (cached per process) and the old objects to compare the new ones with."""
    from loramem.answer.pipeline import memory_off
    from loramem.likelihood import answer_logprobs, first_words

    key = (base.fingerprint, tuple(probes))
    if key not in _BEFORE:
        model, off = memory_off(base)
        with off:
            before = probe_model(model, base, probes, [])
            olds = [p.old if p.old is not None else first_words(g, len(p.new.split()))
                    for p, g in zip(probes, before["gen"], strict=True)]
            before["lp_old"] = answer_logprobs(model, base, [p.prompt for p in probes], olds)
        _BEFORE[key] = (before, olds)
    return _BEFORE[key]


def run_cell(cell: dict, opts: RecipeOptions) -> dict:
    from loramem.models import load_base
    from loramem.writer import write_module

    base = load_base(opts.model)
    es = edit_set(cell, opts)
    rewrites = es.by_kind("rewrite")[: cell["max_probes"]]
    keep = {p.subject for p in rewrites}
    probes = rewrites + [p for p in es.probes if p.kind != "rewrite" and p.subject in keep]
    before, olds = baseline(base, probes)
    cfg = WriterConfig(rank=cell["rank"], seed=opts.seed, progress=False, **cell["writer"])
    folder = Path(opts.out) / "modules" / cell["cell"]
    res = write_module(es.examples(), base, cfg, out=folder, adapter=ADAPTER)
    after = probe_model(res.model, base, probes, olds)
    res.model.delete_adapter(ADAPTER)
    rec = res.record
    storage = sum(f.stat().st_size for f in folder.iterdir() if f.name.startswith("adapter_"))
    return {**measure(before, after, probes, olds), "n_edits": len(es.edits), "size_tokens": rec["knowledge_tokens"],
            "n_params": rec["n_params"], "storage_bytes": storage, "train_s": rec["train_s"],
            "steps": rec["steps"], "final_loss": rec["final_loss"], "layers_resolved": rec.get("layers_resolved"), "source": es.source,
            **kept_predictions(probe_predictions(after, probes, olds)),
            "known_facts": known_predictions(before, after)}


def probe_predictions(after: dict, probes: list[cf.Probe], olds: list[str]) -> list[dict]:
    """Per probe (pure): its kind, prompt, new object (gold), old object, greedy continuation after the edit, and
    its scores: new_beats_old (P(new) > P(old) after the edit: efficacy on rewrite and paraphrase prompts; on a
    neighborhood prompt locality wants it False) and starts_with_new (generation accuracy)."""
    from loramem.likelihood import starts_with_answer

    return [{"kind": p.kind, "question": p.prompt, "gold": p.new, "old": olds[i], "prediction": after["gen"][i],
             "new_beats_old": after["lp_new"][i] > after["lp_old"][i] if after["lp_old"] else None,
             "starts_with_new": starts_with_answer(after["gen"][i], p.new)} for i, p in enumerate(probes)]


def known_predictions(before: dict, after: dict) -> list[dict]:
    """Each fact the base model may know (pure): its answer before the edit and after it, each right or not
    (`known_retained` is the share of the facts right before that are still right after)."""
    from loramem.likelihood import starts_with_answer

    return [{"question": q, "gold": a, "before": b, "prediction": g, "right_before": starts_with_answer(b, a),
             "right_after": starts_with_answer(g, a)}
            for (q, a), b, g in zip(cf.KNOWN_FACTS, before["known"], after["known"], strict=True)]


def summarize(rows: list[dict], opts: RecipeOptions) -> dict:
    out = Path(opts.out)
    rows = sorted(rows, key=lambda r: (r["rank"], r["size_tokens"]))
    cols = ["rank", "size", "n_edits", "efficacy_before", "efficacy", "generation_accuracy_before",
            "generation_accuracy", "paraphrase_efficacy", "neighborhood_locality", "unrelated_unchanged",
            "known_before", "known_retained", "n_params", "storage_bytes", "train_s"]
    fmt = {c: ".3f" for c in cols if c not in ("rank", "size", "n_edits", "known_before", "n_params", "storage_bytes")}
    (out / "counterfact.md").write_text("### CounterFact editing with LoRA modules\n\n"
                                        + markdown_table(rows, cols, fmt=fmt))
    curves, cis = {}, {}
    for r in sorted({r["rank"] for r in rows}):
        mine = [x for x in rows if x["rank"] == r]
        curves[f"rank {r}"] = ([x["size_tokens"] for x in mine], [x["efficacy"] or 0.0 for x in mine])
        # efficacy is a share of the rewrite prompts compared (old object differs from the new): Wilson over them
        cis[f"rank {r}"] = [share_interval(x["efficacy"], x.get("n_compared")) for x in mine]
    compared = sorted({r.get("n_compared") for r in rows if r.get("n_compared")})
    # one edit size gives one x: line_plot then draws each rank as a point with its bar and its value written
    line_plot(out / "efficacy_vs_size.png", curves, "CounterFact efficacy vs edited tokens", "edit tokens",
              "efficacy (P(new) > P(old))", n=f"n = {'/'.join(map(str, compared)) or '?'} edit prompts per point",
              intervals=cis)
    valid = [r["efficacy"] for r in rows if r["efficacy"] is not None]
    return {"per_cell": {r["cell"]: {k: r.get(k) for k in cols} for r in rows},
            "mean_efficacy": sum(valid) / len(valid) if valid else None,
            "mean_known_retained": _mean([r["known_retained"] for r in rows])}


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


RECIPE = Recipe("counterfact", "CounterFact: editing facts into LoRA modules (efficacy, locality, cost)",
                cells, run_cell, summarize)
