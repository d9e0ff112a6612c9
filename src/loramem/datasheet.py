"""`loramem datasheet`: run the paper's research questions on one base model and write a report.

Each recipe runs into DIR/<recipe>/ (its own results.jsonl, so a rerun resumes and skips finished cells);
DIR/results.jsonl gathers every recipe's rows, DIR/findings.json holds the verdicts, and DIR/report.md and
DIR/report.html (self-contained, plots embedded) are rendered from those files alone.
"""

from __future__ import annotations

import base64
import json
import os
import platform
import time
from pathlib import Path

from rich.console import Console

from loramem import experiments, findings
from loramem.ablations import Pipeline, run_ablations
from loramem.errors import UserError
from loramem.runs.runner import RecipeOptions, read_rows, run_recipe_status

console = Console(stderr=True)

# In the paper's order: capacity, internalization, multi-module, complementarity.
ORDER = ["capacity", "formats", "mixes", "model-scale", "generators", "multi-lora", "routing", "merging",
         "n-modules", "rag-icl", "counterfact", "continual"]


def recipe_names(only: str | None = None) -> list[str]:
    """Recipes to run: all registered ones in the paper's order, or the comma list given."""
    have = experiments.available()
    known = [n for n in ORDER if n in have] + [n for n in have if n not in ORDER]
    if not only:
        return known
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    if not wanted:
        raise UserError(f"--only {only!r} names no recipe; give a comma list such as capacity,routing")
    for w in wanted:
        experiments.get(w)  # raises UserError naming the choices
    return [n for n in known if n in wanted]


def run_datasheet(model: str, scale: str, out: Path, only: str | None = None, executor: str = "local",
                  address: str | None = None, seed: int = 0, paper_data: Path | None = None,
                  progress: bool = True, params: dict[str, dict] | None = None, workers: int | None = None,
                  command: str | None = None, ablations: bool | None = None) -> dict:
    """Run the recipes, gather rows, compute findings, write the report. Returns the findings and paths.

    `workers`: recipes run at once, each in its own process with its share of the cores (local executor only);
    None picks `workers.auto_workers()` (one per core up to 4, ~6 GiB of memory each; 1 with a GPU)."""
    from loramem.runs import workers as pool

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = recipe_names(only)
    wanted = 1 if executor != "local" else (pool.auto_workers() if workers is None else max(1, int(workers)))
    ablate = scale != "smoke" if ablations is None else ablations  # default: at cpu and paper scale, not the demo
    n_workers = min(wanted, len(pool.plan(names)))  # one recipe: in this process, its reruns after it
    t0 = time.time()
    clock = Sittings(out / "sittings.json", scale=scale, model=model)
    try:
        info = {**environment(model), "command": command or "loramem.datasheet(...) from Python",
                "git_commit": git_commit()}  # environment() loads the base model (converting it once if needed) before any worker starts
        jobs = [(experiments.get(name), RecipeOptions(model=model, scale=scale, out=out / name, seed=seed,
                                                      paper_data=paper_data, progress=progress,
                                                      params=(params or {}).get(name, {}))) for name in names]
        ran: dict[str, dict] = {}  # ablation reruns that ran beside the main recipes
        if n_workers > 1:
            from loramem import models

            models._LOADED.clear()  # the workers load their own copies; the parent only draws the progress view
            follow = Pipeline(out, names, model, scale, seed, paper_data, progress, params) if ablate else None
            status = pool.run_parallel(jobs, n_workers, out / "logs", progress=progress, follow=follow)
            # reruns that ran (a unit no worker ran, or one whose worker died, runs again after)
            ran = {n: st for n, st in status.items() if follow is not None and n in follow.started
                   and not st.get("incomplete")}
        else:
            status = {}
            for i, (recipe, opts) in enumerate(jobs, start=1):
                elapsed = time.time() - t0
                eta = f", about {elapsed / (i - 1) * (len(names) - i + 1) / 60:.0f} min left" if i > 1 else ""
                console.rule(f"[{i}/{len(names)}] {recipe.name}: {recipe.question}{eta}")
                status[recipe.name] = run_recipe_status(recipe, opts, executor=executor, address=address)
                if "error" in status[recipe.name]:
                    console.print(f"[red]{recipe.name} failed:[/red] {status[recipe.name]['error']}")
                gather_rows(out, names)
        status = {name: status[name] for name in names if name in status}
        rows = gather_rows(out, names)
        by_recipe = {n: [r for r in rows if r.get("recipe") == n and r.get("status") == "ok"] for n in names}
        verdicts = findings.evaluate(by_recipe)
        info.update(scale=scale, recipes=status, workers=n_workers, executor=executor,
                    threads_per_worker=pool.threads_per_worker(n_workers) if n_workers > 1 else _torch_threads())
        publish(out, names, verdicts, info, clock.snapshot(), t0)  # the report stands before the last reruns
        if ablate:
            run_ablations(verdicts, by_recipe, model, scale, out, seed=seed, paper_data=paper_data,
                          progress=progress, executor=executor, address=address, params=params, workers=wanted,
                          ran=ran)
    finally:
        sittings = clock.stop()
    publish(out, names, verdicts, info, sittings, t0)
    return {"findings": verdicts, "out": str(out), "recipes": status}


def publish(out: Path, names: list[str], verdicts: list[dict], info: dict, sittings: list[dict], t0: float) -> None:
    """findings.json, run.json (wall time summed over every sitting) and the report, from what is known now."""
    (out / "findings.json").write_text(json.dumps(verdicts, indent=2, default=str))
    info.update(wall_s=round(sum(x["wall_s"] for x in sittings), 1), sitting_wall_s=round(time.time() - t0, 1),
                sittings=sittings)
    (out / "run.json").write_text(json.dumps(info, indent=2, default=str))
    md = render_markdown(out, names, verdicts, info)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(render_html(md, out))


class Sittings:
    """The wall time of a datasheet that resumes across sittings. Each run into DIR is one sitting, appended to
    DIR/sittings.json and rewritten every `every` seconds from a background thread, so a sitting that is killed
    still counts (to within `every` seconds). Sittings of another scale or model in the same folder are dropped:
    their cells are not this datasheet's."""

    def __init__(self, path: Path, scale: str, model: str, every: float = 15.0):
        import threading

        self.path, self.t0, self.every = Path(path), time.time(), every
        try:
            old = json.loads(self.path.read_text())
        except (OSError, ValueError):
            old = []
        self.past = [x for x in old if isinstance(x, dict) and x.get("scale") == scale and x.get("model") == model]
        self.now = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.t0)), "scale": scale,
                    "model": model, "git_commit": git_commit(), "machine": machine(), "wall_s": 0.0,
                    "finished": False}
        self._done, self._lock = threading.Event(), threading.Lock()
        self._write()
        self._thread = threading.Thread(target=self._tick, daemon=True)
        self._thread.start()

    def _write(self) -> list[dict]:
        with self._lock:  # the ticking thread and the run itself both write
            self.now["wall_s"] = round(time.time() - self.t0, 1)
            every = [*self.past, dict(self.now)]
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(every, indent=2))
            os.replace(tmp, self.path)
            return every

    def _tick(self) -> None:
        while not self._done.wait(self.every):
            self._write()

    def snapshot(self) -> list[dict]:
        """Every sitting so far, this one (still running) last."""
        return self._write()

    def stop(self) -> list[dict]:
        """End this sitting; every sitting so far, this one last."""
        self._done.set()
        self._thread.join()
        self.now["finished"] = True
        return self._write()


def _cells_line(st: dict) -> str:
    """How many cells finished, and the seconds of the sitting that ran them: a resumed run's earlier sittings
    ran the rest, and their seconds are in sittings.json, not here."""
    done = f"{st.get('ok', 0)}/{st.get('cells', 0)} cells finished"
    ran = st.get("ran")
    if ran is None or ran >= st.get("ok", 0):
        return f"{done} in {st.get('seconds', 0):.0f} s."
    if ran == 0:
        return f"{done} in earlier sittings (this one only summarized them)."
    return f"{done}; this sitting ran {ran} of them in {st.get('seconds', 0):.0f} s, earlier sittings the rest."


def _sittings(info: dict) -> str:
    n = len(info.get("sittings") or [])
    return f" of wall time over {n} sittings (it resumed)" if n > 1 else ""


def _concurrency(info: dict) -> str:
    if info.get("executor") == "ray":
        return "1 (its cells ran as Ray tasks)"
    if info.get("workers", 1) > 1:
        return (f"{info['workers']} (worker processes, {info.get('threads_per_worker')} threads each; timings inside "
                "recipes were taken under that load)")
    return f"1 ({info.get('threads_per_worker', '?')} threads)"


def _torch_threads() -> int:
    """Threads this process computes with (one recipe at a time: torch's own default, or OMP_NUM_THREADS)."""
    import torch

    return torch.get_num_threads()


def gather_rows(out: Path, names: list[str]) -> list[dict]:
    """All recipes' rows into DIR/results.jsonl (rewritten whole, so it is always consistent)."""
    rows = [r for n in names for r in read_rows(out / n / "results.jsonl") if r.get("recipe") == n]
    tmp = out / "results.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
    os.replace(tmp, out / "results.jsonl")
    return rows


def environment(model: str) -> dict:
    """Versions, hardware and the base model's identity, for the report's first section."""
    import torch

    from loramem.adapters import package_versions
    from loramem.embeddings import query_encoder_in_use
    from loramem.models import load_base
    from loramem.writer import precision_for

    base = load_base(model)
    mem_gib = None
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {
        "model": model, "model_source": base.source, "model_fingerprint": base.fingerprint,
        "model_params": sum(p.numel() for p in base.model.parameters()),
        "packages": package_versions(), "python": platform.python_version(),
        "cpu": _cpu_name(), "cores": os.cpu_count(), "memory_gib": mem_gib,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "router_query_encoder": f"all-MiniLM-L6-v2 {query_encoder_in_use()} (LORAMEM_QUERY_ENCODER)",
        "writer_precision": {"bf16": "bf16 autocast", "fp32": "fp32"}[precision_for("auto", base.device)]
                            + " (LORAMEM_PRECISION)",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def git_commit() -> str:
    """The commit of the loramem checkout that ran (with '+dirty' for uncommitted changes), or 'not a checkout'."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return "not a checkout"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha.stdout.strip()[:12] + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "not a checkout"


def evidence_sentence(evidence: dict) -> str:
    """The evidence of a verdict as a readable sentence with its numbers (the JSON stays in findings.json)."""
    why = evidence.get("why")
    parts = [_phrase(k, v) for k, v in evidence.items() if k != "why"]
    text = "; ".join(p for p in parts if p)
    return (f"{why}. " if why else "") + (text[:1].upper() + text[1:] + "." if text else "")


def _phrase(key: str, value) -> str:
    name = key.replace("_", " ")
    if isinstance(value, float):
        return f"{name} {value:.3g}"
    if isinstance(value, dict):
        inner = ", ".join(f"{k}: {v:.3g}" if isinstance(v, float) else f"{k}: {v}" for k, v in value.items())
        return f"{name} ({inner})"
    if isinstance(value, list):
        return f"{name} " + ", ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in value)
    return f"{name} {value}"


def machine() -> str:
    """What a sitting ran on, in one line: cores, CPU, GPU and the LoRA training precision it resolves to. Timings
    and (under bf16) numbers depend on it, so every sitting records its own."""
    import torch

    from loramem.writer import precision_for

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = f", {torch.cuda.get_device_name(0)}" if device.type == "cuda" else ""
    return f"{os.cpu_count()} x {_cpu_name()}{gpu}, {precision_for('auto', device)}"


def _machines(info: dict) -> str | None:
    """The sittings' machines, when they were not all the same one (else None)."""
    seen = [x.get("machine", "not recorded") for x in info.get("sittings") or []]
    if len(set(seen)) < 2:
        return None
    return "; ".join(f"sitting {i}: {m}" for i, m in enumerate(seen, start=1))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def render_markdown(out: Path, names: list[str], verdicts: list[dict], info: dict) -> str:
    """The report as Markdown, built only from files in `out`."""
    side = side_results(out, names)
    sections = ["Environment", "Findings of the paper, checked on this run",
                *(["Ablations of the disagreements"] if any(v.get("ablation") for v in verdicts) else []),
                *(["Notable side results"] if side else []), *names]
    toc = [f"- [{s}](#{_anchor(s if s not in names else f'{s}: {experiments.get(s).question}')})" for s in sections]
    lines = [f"# loramem datasheet: {info['model']}", "",
             f"Scale `{info['scale']}`, {info['date']}, {info['wall_s'] / 60:.1f} min{_sittings(info)}.", "", "## Contents", "",
             *toc, "", "## Environment", "", "| item | value |", "|---|---|"]
    env_items = {"command": f"`{info.get('command', 'not recorded')}`",
                 "loramem git commit": info.get("git_commit", "not recorded"), "model source": info["model_source"], "model fingerprint": info["model_fingerprint"],
                 "model parameters": f"{info['model_params']:,}", "cpu": info["cpu"], "cores": info["cores"],
                 "memory (GiB)": info["memory_gib"], "gpu": info["gpu"] or "none", "python": info["python"],
                 "router query encoder": info.get("router_query_encoder", "all-MiniLM-L6-v2"),
                 "LoRA training precision": info.get("writer_precision", "not recorded"),
                 "recipes at once": _concurrency(info),
                 **({"sittings ran on": _machines(info)} if _machines(info) else {}),
                 **{k: v for k, v in info["packages"].items()}}
    lines += [f"| {k} | {v} |" for k, v in env_items.items()]
    lines += ["", "## Findings of the paper, checked on this run", "",
              "Each finding is a paired comparison (the same facts, papers or questions under both arms); its effect "
              "is signed so that the paper's claim is positive, on a 0-1 scale, with a 95% paired bootstrap interval "
              "(two-level over seeds, papers or benchmarks where the items come from several). *agrees*: the interval "
              "lies above 0; *disagrees*: it lies below 0, or inside the no-effect margin declared before the run; "
              "*undecided*: otherwise (the evidence says why); *not measured*: the recipe did not run or finished no "
              "cell. Computed from `results.jsonl`; the same numbers are in `findings.json`.", "",
              "| finding | verdict | effect (A minus B) | 95% interval | margin | n | evidence |",
              "|---|---|---|---|---|---|---|"]
    for v in verdicts:
        ev = evidence_sentence(v["evidence"]).replace("|", "\\|")
        if v.get("n_to_decide"):  # the power calculation at this run's spread
            ev = f"About {v['n_to_decide']} paired items (this run: {v['n']}) would decide it. " + ev
        eff = "-" if v.get("effect") is None else f"{v['effect']:+.3f}"
        ci = "-" if v.get("ci_low") is None else f"{v['ci_low']:+.3f} to {v['ci_high']:+.3f}"
        what = v.get("effect_is", "").replace("|", "\\|")
        lines.append(f"| {v['finding']} ({v['recipe']}) | **{findings.label(v)}** | {eff} ({what}) | {ci} | "
                     f"{v.get('margin', '-')} | {v.get('n', '-')} | {ev} |")
    lines += ablation_section(verdicts)
    if side:
        lines += ["", "## Notable side results", "", *[f"- {x}" for x in side]]
    for name in names:
        recipe = experiments.get(name)
        st = info["recipes"].get(name, {})
        lines += ["", f"## {name}: {recipe.question}", ""]
        if "error" in st:
            lines += [f"This recipe failed: `{st['error']}`"]
            continue
        lines.append(_cells_line(st) + (f" Failed cells: {', '.join(st['failed'])}." if st.get("failed") else ""))
        folder = out / name
        for md in sorted(folder.glob("*.md")):
            lines += ["", md.read_text().strip()]
        ok_rows = [r for r in read_rows(folder / "results.jsonl") if r.get("status") == "ok"]
        used = hyperparameters(ok_rows)
        if used:
            lines += ["", f"Settings of its cells (from the rows): {used}."]
        if (folder / "results.jsonl").is_file():
            lines += ["", f"Every cell's row, with its config{predictions_note(ok_rows)}: "
                          f"[{name}/results.jsonl]({name}/results.jsonl)."]
        for png in sorted(folder.glob("*.png")):
            svg = f" ([SVG]({name}/{png.stem}.svg))" if png.with_suffix(".svg").is_file() else ""
            lines += ["", f"![{png.stem}]({name}/{png.name}){svg}"]
    return "\n".join(lines) + "\n"


def ablation_section(verdicts: list[dict]) -> list[str]:
    """The ablation beside each disagreement: its likely cause, what changed, and the verdict that gave."""
    have = [v for v in verdicts if v.get("ablation")]
    if not have:
        return []
    out = ["", "## Ablations of the disagreements", "",
           "Each finding that disagrees gets the one ablation declared for it (`findings.ABLATIONS`): a rerun of its "
           "recipe with one setting changed, or the same kept answers re-scored; a few run whatever the verdict, "
           "where an agreement could rest on one arm failing to train. The verdict is decided the same way.", "",
           "| finding | main run | likely cause | what changed | ablation verdict | effect | 95% interval | n |",
           "|---|---|---|---|---|---|---|---|"]
    for v in have:
        a = v["ablation"]
        main = f"{findings.label(v)} {v['effect']:+.3f}" if v.get("effect") is not None else findings.label(v)
        if a.get("verdict") is None:
            out.append(f"| {v['name']} | {main} | {a.get('cause', '-')} | {a.get('change', '-')} | "
                       f"not run: {a.get('why', '')} | - | - | - |")
            continue
        eff = "-" if a.get("effect") is None else f"{a['effect']:+.3f}"
        ci = "-" if a.get("ci_low") is None else f"{a['ci_low']:+.3f} to {a['ci_high']:+.3f}"
        where = f" ([rows]({a['folder']}/results.jsonl))" if a.get("folder") else ""
        why = a.get("evidence", {}).get("why")
        out.append(f"| {v['name']} | {main} | {a['cause']} | {a['change']}{where} | **{a['verdict']}**"
                   f"{' (' + why + ')' if why and a.get('effect') is None else ''} | {eff} | {ci} | {a.get('n', '-')} |")
    return out


def predictions_note(rows: list[dict]) -> str:
    """What the rows keep of each question (answer, gold, scores), for the sentence that links them."""
    kept = [r for r in rows if r.get("predictions")]
    if not kept:
        return ""
    sampled = any(r.get("predictions_of", 0) > len(r["predictions"]) for r in kept)
    how = {r.get("predictions_by") for r in kept} - {None}
    return (" and each question’s answer, gold and scores (`predictions`"
            + (f", read by {', '.join(sorted(how))}" if how else "")
            + ("; an evenly spaced sample where a cell answered more" if sampled else "")
            + (f"; {len(kept)} of {len(rows)} cells, the others were cached before predictions were kept"
               if len(kept) < len(rows) else "") + ")")


HYPERPARAMETERS = ("rank", "alpha", "lr", "schedule", "steps", "epochs", "batch_size", "layers", "layers_resolved", "targets", "loss",
                   "format", "dropout", "target_em", "answer_tokens", "top_k", "method", "train_seed")


def hyperparameters(rows: list[dict]) -> str:
    """The training settings a recipe's ok rows used, each with its distinct values (from the rows, not typed)."""
    seen: dict[str, list] = {}
    for r in rows:
        flat = dict(r)
        for sub in ("writer", "config"):  # recipes that nest the writer's settings
            if isinstance(r.get(sub), dict):
                flat.update(r[sub])
        for k in HYPERPARAMETERS:
            v = flat.get(k)
            if v is not None and v not in seen.setdefault(k, []):
                seen[k].append(v)
    parts = [f"{k} {', '.join(map(str, sorted(v, key=str)))}" for k, v in seen.items() if v]
    return "; ".join(parts)


def side_results(out: Path, names: list[str]) -> list[str]:
    """Results a reader should not miss that no finding checks, as sentences from the recipes' summaries."""
    said = []
    cf = out / "counterfact" / "summary.json"
    if "counterfact" in names and cf.is_file():
        summary = json.loads(cf.read_text())
        kept = summary.get("mean_known_retained")
        known = [c.get("known_before") for c in summary.get("per_cell", {}).values() if c.get("known_before")]
        if kept is not None:
            said.append(f"Editing has a cost the paper does not report: after training, the CounterFact modules "
                        f"kept {kept:.3f} of the facts the base model answered right before "
                        f"(mean over cells; {', '.join(map(str, known)) or 'n/a'} such facts per cell).")
    return said


def _anchor(title: str) -> str:
    """The id Python-Markdown's toc extension gives a heading."""
    import re

    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", title).strip().lower())


def render_html(md: str, out: Path) -> str:
    """Self-contained HTML: the Markdown rendered, every image embedded as base64."""
    import markdown

    body = markdown.markdown(md, extensions=["tables", "fenced_code", "toc"])
    for png in out.glob("*/*.png"):
        ref = f'src="{png.parent.name}/{png.name}"'
        if ref in body:
            data = base64.b64encode(png.read_bytes()).decode()
            body = body.replace(ref, f'src="data:image/png;base64,{data}"')
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "vertical-align:top;font-size:14px}img{max-width:100%}code{font-size:12px;word-break:break-word}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>loramem datasheet</title>"
            f"<style>{style}</style></head><body>{body}</body></html>")
