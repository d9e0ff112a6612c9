"""CounterFact edits: the paper's released subsets and the original ROME `counterfact.json`.

An edit is a sentence stating a counterfactual ("Lenta.ru is written in Italian"); the module is trained on the
sentences as raw text and probed with cloze prompts ("Lenta.ru is written in" -> " Italian").

The paper's release (pb_cf/):
  counterfact_edit_{1..20}K.csv   one column `text`, one edit sentence per row (each size extends the smaller)
  counterfact_edit_{N}K_meta.json {"description", "subjects": [...]} the subjects edited in that file
  counterfact_eval_qa.json        [{"question": cloze prompt, "answer": new object}] probes of the 1K subjects
It has no true (old) objects: efficacy then compares the new object with what the base model itself answered
before the edit. ROME's counterfact.json (records with requested_rewrite / paraphrase_prompts /
neighborhood_prompts) gives true objects and neighborhood prompts, so locality is measured on it as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from loramem.data.reading import csv_rows, read_json
from loramem.errors import UserError
from loramem.formats import Example

SIZES = [f"{n}K" for n in range(1, 21)]
EVAL_FILE = "counterfact_eval_qa.json"


@dataclass(frozen=True)
class Probe:
    """A cloze prompt whose edited answer is `new`; `old` is the true object when the data has it.
    kind: rewrite (the edited prompt), paraphrase (same fact, other words) or neighborhood (another subject
    with the same true object: the edit must not touch it)."""

    prompt: str
    new: str
    old: str | None = None
    kind: str = "rewrite"
    subject: str = ""


@dataclass
class EditSet:
    """Training sentences plus the probes that check them."""

    edits: list[str]
    probes: list[Probe]
    subjects: list[str] = field(default_factory=list)
    source: str = ""

    def examples(self) -> list[Example]:
        """The edits as raw-text training examples (empty prompt = the whole sentence is supervised)."""
        return [Example("", s, key=s) for s in self.edits]

    def by_kind(self, kind: str) -> list[Probe]:
        return [p for p in self.probes if p.kind == kind]


def read_edits(path: str | Path) -> list[str]:
    """Edit sentences of a `counterfact_edit_*K.csv` file (header `text`)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"CounterFact file {p} does not exist; pass --paper-data pointing at the paper's release")
    fieldnames, rows = csv_rows(p)
    if "text" not in fieldnames:
        raise UserError(f"{p} is not a CounterFact edit file: expected a CSV with a 'text' column")
    return [(row["text"] or "").strip() for row in rows if (row["text"] or "").strip()]


def read_meta(path: str | Path) -> list[str]:
    """Subjects edited in one size (`counterfact_edit_*K_meta.json`)."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("subjects"), list):
        raise UserError(f"{path} is not a CounterFact meta file: expected {{'subjects': [...]}}")
    return [str(s) for s in data["subjects"]]


def read_eval(path: str | Path) -> list[tuple[str, str]]:
    """(cloze prompt, new object) pairs of `counterfact_eval_qa.json`."""
    data = read_json(path)
    try:
        if not isinstance(data, list):
            raise TypeError
        return [(str(d["question"]).strip(), str(d["answer"]).strip()) for d in data]
    except (TypeError, KeyError, IndexError):
        raise UserError(f"{path} is not a CounterFact eval file: expected [{{'question', 'answer'}}, ...]") from None


def paper_files(size: str, release_dir: str | Path) -> tuple[Path, Path]:
    """(edits CSV, meta JSON) of one size such as '1K', from the release folder (or its pb_cf/ subfolder)."""
    size = size.upper()
    if size not in SIZES:
        raise UserError(f"CounterFact size '{size}' is not in the paper's release; choose from 1K..20K")
    root = Path(release_dir)
    folder = root / "pb_cf" if (root / "pb_cf").is_dir() else root
    return folder / f"counterfact_edit_{size}.csv", folder / f"counterfact_edit_{size}_meta.json"


def load_paper(size: str, release_dir: str | Path) -> EditSet:
    """One size of the paper's CounterFact subset, probed by the eval prompts whose sentence it trains on."""
    csv_path, meta_path = paper_files(size, release_dir)
    edits = read_edits(csv_path)
    subjects = read_meta(meta_path) if meta_path.is_file() else []
    trained = set(edits)
    probes = []
    for prompt, new in read_eval(csv_path.parent / EVAL_FILE):
        if f"{prompt} {new}" in trained:  # a few eval prompts state facts no file trains: they cannot be judged
            probes.append(Probe(prompt, new, None, "rewrite", next((s for s in subjects if s in prompt), "")))
    if not probes:
        raise UserError(f"no eval prompt of {EVAL_FILE} matches an edit in {csv_path.name}")
    return EditSet(edits, probes, subjects, str(csv_path))


def load_rome(path: str | Path, limit: int | None = None) -> EditSet:
    """ROME's counterfact.json: requested_rewrite {prompt with '{}', subject, target_new, target_true},
    paraphrase_prompts and neighborhood_prompts."""
    records = read_json(path)
    if not isinstance(records, list):
        raise UserError(f"{path} is not ROME's counterfact.json (a JSON list of records with requested_rewrite)")
    edits, probes, subjects = [], [], []
    for rec in records[:limit]:
        try:
            rw = rec["requested_rewrite"]
            subject = rw["subject"]
            prompt = rw["prompt"].replace("{}", subject)
            new, old = rw["target_new"]["str"].strip(), rw["target_true"]["str"].strip()
            more = [(p.strip(), kind) for kind in ("paraphrase", "neighborhood") for p in rec.get(f"{kind}_prompts", [])]
        except (KeyError, TypeError, AttributeError):
            raise UserError(f"{path} is not ROME's counterfact.json (records need requested_rewrite)") from None
        edits.append(f"{prompt} {new}")
        subjects.append(subject)
        probes.append(Probe(prompt, new, old, "rewrite", subject))
        probes += [Probe(p, new, old, kind, subject) for p, kind in more]
    return EditSet(edits, probes, subjects, str(path))


# Facts a small instruct model usually knows, to measure what an edit module costs on knowledge the base had.
# Each is (cloze prompt, answer); only those the base model gets right before editing are counted.
KNOWN_FACTS: list[tuple[str, str]] = [
    ("The capital of France is", "Paris"), ("The capital of Japan is", "Tokyo"),
    ("The capital of Italy is", "Rome"), ("The capital of Germany is", "Berlin"),
    ("The capital of Spain is", "Madrid"), ("The capital of England is", "London"),
    ("The capital of Russia is", "Moscow"), ("The capital of China is", "Beijing"),
    ("The capital of Egypt is", "Cairo"), ("The capital of Canada is", "Ottawa"),
    ("The Eiffel Tower is located in the city of", "Paris"), ("The Colosseum is located in the city of", "Rome"),
    ("The Statue of Liberty is located in", "New York"), ("The Great Wall is located in", "China"),
    ("The chemical symbol for gold is", "Au"), ("Water is made of hydrogen and", "oxygen"),
    ("The largest planet in the solar system is", "Jupiter"), ("The closest star to the Earth is the", "Sun"),
    ("Romeo and Juliet was written by William", "Shakespeare"), ("The theory of relativity was developed by Albert", "Einstein"),
    ("The Mona Lisa was painted by Leonardo da", "Vinci"), ("The iPhone is made by", "Apple"),
    ("Windows is an operating system made by", "Microsoft"), ("The official language of Brazil is", "Portuguese"),
    ("The official language of Mexico is", "Spanish"), ("The official language of Germany is", "German"),
    ("The official language of France is", "French"), ("People in Japan speak", "Japanese"),
    ("The Amazon river flows through", "Brazil"), ("Mount Everest is located in", "Nepal"),
    ("One week has seven", "days"), ("The opposite of hot is", "cold"),
]
