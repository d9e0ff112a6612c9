"""Training files of any supported kind -> `Example`s.

- PhoneBook files in the paper's formats (CSV `text` rows, Name,Phone CSV, eval JSON) -> one example per entry;
- JSONL rows {"prompt", "answer"}, {"question", "answer"} (question gets the paper's `Question: …? Answer:` frame)
  or {"text"} (raw text: loss on the whole text).
"""

from __future__ import annotations

from pathlib import Path

from loramem.data import phonebook
from loramem.errors import UserError
from loramem.formats import Example, question_prompt


def read_examples(path: str | Path) -> list[Example]:
    """Examples from a training file (PhoneBook CSV/JSON or JSONL rows)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"training file not found: {p}; pass an existing CSV, JSON or JSONL file")
    if p.suffix.lower() == ".jsonl":
        return _read_jsonl(p)
    if p.suffix.lower() in (".csv", ".json"):
        return [e.example() for e in phonebook.read(p)]
    raise UserError(f"{p}: unsupported training file type '{p.suffix}'; use .csv, .json (PhoneBook) or .jsonl rows")


def row_to_example(row: dict, where: str = "") -> Example:
    key = str(row.get("key", ""))
    if "prompt" in row and "answer" in row:
        return Example(str(row["prompt"]), str(row["answer"]), key)
    if "question" in row and "answer" in row:
        return Example(question_prompt(str(row["question"])), str(row["answer"]), key)
    if "text" in row:
        return Example("", str(row["text"]), key)
    raise UserError(f"{where}: row needs 'prompt'+'answer', 'question'+'answer' or 'text' (has {sorted(row)})")


def _read_jsonl(p: Path) -> list[Example]:
    from loramem.data.documents import jsonl_rows

    return [row_to_example(row, f"{p}:{n}") for n, row in jsonl_rows(p)]
