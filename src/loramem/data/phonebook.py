"""PhoneBook: fictitious names mapped to phone numbers, the paper's zero-prior capacity benchmark.

Reads the paper's released files as they are (`phonebook_qa_{N}K.csv` rows "Question: What is the phone
number of NAME? Answer: ddd-ddd-dddd", `phonebook_eval_qa_*.json`, `synthetic_phonebook.csv` with Name,Phone,
and the 128K file's sector files with their routing meta) and generates new PhoneBooks from a seed.
"""

from __future__ import annotations

import csv
import math
import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from loramem.data.reading import csv_rows, read_json
from loramem.errors import UserError
from loramem.formats import Example, question_prompt, render

NUMBER_RE = re.compile(r"^\d{3}-\d{3}-\d{4}$")
ROW_RE = re.compile(r"^\s*Question:\s*What is the phone number of (?P<name>.+?)\?\s*Answer:\s*(?P<number>\S+)\s*$")
ANSWER_SPACE_BITS = math.log2(10**10)  # ddd-ddd-dddd: 10^10 equally likely numbers


@dataclass(frozen=True)
class Entry:
    name: str
    number: str

    def question(self) -> str:
        return f"What is the phone number of {self.name}"

    def example(self) -> Example:
        return Example(prompt=question_prompt(self.question()), answer=self.number, key=self.name)

    def row(self) -> str:
        return f"Question: {self.question()}? Answer: {self.number}"


@dataclass(frozen=True)
class Sector:
    """One part of a partitioned PhoneBook (the paper's 128K file has 16)."""

    index: int
    entries: list[Entry]
    path: Path
    num_tokens: int | None = None


def _names() -> tuple[list[str], list[str]]:
    text = resources.files("loramem.data").joinpath("names.txt").read_text()
    first_part, last_part = text.split("# last names")
    first = [w for line in first_part.splitlines() if not line.startswith("#") for w in line.split()]
    last = [w for line in last_part.splitlines() if not line.startswith("#") for w in line.split()]
    return sorted(set(first)), sorted(set(last))


def generate(entries: int, seed: int = 0) -> list[Entry]:
    """`entries` fictitious, collision-free (name, number) pairs; the same seed gives the same book, and a
    smaller book is a prefix of a larger one."""
    if entries < 1:
        raise UserError(f"a PhoneBook needs at least 1 entry (got {entries}); pass e.g. --entries 50")
    first, last = _names()
    rng = random.Random(seed)
    names: set[str] = set()
    numbers: set[str] = set()
    out: list[Entry] = []
    capacity = len(first) * len(last) * 27
    if entries > capacity // 2:
        raise UserError(f"at most {capacity // 2} generated entries are supported (asked {entries})")
    while len(out) < entries:
        middle = rng.choice(" ABCDEFGHIJKLMNOPRSTUVWYZ")
        name = f"{rng.choice(first)} {middle + '. ' if middle.strip() else ''}{rng.choice(last)}"
        number = f"{rng.randint(200, 999)}-{rng.randint(100, 999)}-{rng.randint(0, 9999):04d}"
        if name in names or number in numbers:
            continue
        names.add(name)
        numbers.add(number)
        out.append(Entry(name, number))
    return out


def generate_tokens(tokens: int, tokenizer, seed: int = 0, fmt: str = "plain") -> list[Entry]:
    """The largest seeded PhoneBook whose formatted training text fits in `tokens` tokens of this tokenizer."""
    per_row = max(1, len(render(Entry("Ann Lee", "555-555-5555").example(), tokenizer, fmt).ids))
    pool = generate(max(4, int(tokens / per_row * 1.5) + 8), seed)
    return fit_tokens(pool, tokens, tokenizer, fmt)


def fit_tokens(entries: list[Entry], tokens: int, tokenizer, fmt: str = "plain") -> list[Entry]:
    """The longest prefix of `entries` whose formatted text has at most `tokens` tokens."""
    total, out = 0, []
    for e in entries:
        n = len(render(e.example(), tokenizer, fmt).ids)
        if total + n > tokens:
            break
        total += n
        out.append(e)
    if not out:
        raise UserError(f"{tokens} tokens do not hold even one PhoneBook entry; ask for a larger size")
    return out


def parse_size(text: str) -> int:
    """'1K' -> 1000 tokens, '2.5K' -> 2500, '500' -> 500."""
    t = text.strip().upper()
    try:
        return int(float(t[:-1]) * 1000) if t.endswith("K") else int(t)
    except ValueError:
        raise UserError(f"bad size '{text}': use tokens like 1K,2K,4K (K = 1000) or plain numbers") from None


def read(path: str | Path) -> list[Entry]:
    """Entries from a paper-format CSV (`text` rows), a Name,Phone CSV, or an eval JSON list of question/answer."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"PhoneBook file not found: {p}; pass an existing file (e.g. phonebook_qa_1K.csv)")
    if p.suffix.lower() == ".json":
        return _read_eval_json(p)
    fieldnames, rows = csv_rows(p)
    cols = [c.strip().lower() for c in fieldnames]
    if cols == ["text"]:
        entries = [_parse_row(r[fieldnames[0]], p, i) for i, r in enumerate(rows, start=2)]
    elif {"name", "phone"} <= set(cols):
        name_col = fieldnames[cols.index("name")]
        phone_col = fieldnames[cols.index("phone")]
        entries = [Entry((r[name_col] or "").strip(), (r[phone_col] or "").strip()) for r in rows]
    else:
        raise UserError(
            f"{p}: columns {fieldnames} are not a PhoneBook; expected one 'text' column of rows "
            "'Question: What is the phone number of NAME? Answer: ddd-ddd-dddd' or columns Name,Phone"
        )
    if not entries:
        raise UserError(f"{p} has no entries")
    return entries


def _parse_row(text: str, p: Path, line: int) -> Entry:
    m = ROW_RE.match(text or "")
    if not m:
        raise UserError(f"{p}:{line}: row is not 'Question: What is the phone number of NAME? Answer: NUMBER'")
    return Entry(m["name"].strip(), m["number"].strip())


def _read_eval_json(p: Path) -> list[Entry]:
    items = read_json(p)
    if not isinstance(items, list) or not all(isinstance(i, dict) and {"question", "answer"} <= i.keys() for i in items):
        raise UserError(f"{p}: expected a JSON list of objects with 'question' and 'answer'")
    out = []
    for i in items:
        m = re.match(r"^\s*What is the phone number of (.+?)\??\s*$", i["question"])
        if not m:
            raise UserError(f"{p}: question '{i['question'][:60]}' is not 'What is the phone number of NAME'")
        out.append(Entry(m[1].strip(), str(i["answer"]).strip()))
    return out


def write(entries: list[Entry], path: str | Path) -> Path:
    """Write entries in the paper's CSV format (one `text` column)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text"])
        for e in entries:
            w.writerow([e.row()])
    return p


def read_sectors(meta_path: str | Path) -> list[Sector]:
    """The sectors of a partitioned PhoneBook from its routing meta (e.g. phonebook_qa_128K_routing_meta.json).
    Sector files are looked up beside the meta file by name, whatever folder the meta recorded."""
    meta_p = Path(meta_path)
    if not meta_p.is_file():
        raise UserError(f"routing meta not found: {meta_p}; pass e.g. phonebook_qa_128K_routing_meta.json")
    meta = read_json(meta_p)
    if "sector_map" not in meta:
        raise UserError(f"{meta_p} has no 'sector_map'; expected the paper's routing meta format")
    sectors = []
    for key, s in sorted(meta["sector_map"].items(), key=lambda kv: int(kv[0])):
        f = meta_p.parent / Path(s["data_file"]).name
        sectors.append(Sector(int(key), read(f), f, s.get("num_tokens")))
    return sectors


def paper_file(size: str, release_dir: Path) -> Path:
    """Path of the paper's `phonebook_qa_{size}.csv` inside a release folder."""
    p = Path(release_dir) / "pb_cf" / f"phonebook_qa_{size.upper()}.csv"
    if not p.is_file():
        raise UserError(f"{p} not found; pass --paper-data pointing at the paper's release folder")
    return p
