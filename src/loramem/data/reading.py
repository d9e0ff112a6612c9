"""The one way user files are read: UTF-8 (a BOM is dropped), with a one-line error for anything else.

Every reader of user data (PhoneBooks, JSONL rows, documents, CounterFact, PaperQA) goes through these, so a
Latin-1 file, an empty CSV, a 1 MB CSV field or JSON nested 100,000 deep is a `UserError`, never a traceback.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from loramem.errors import UserError

CSV_FIELD_LIMIT = 64 * 1024 * 1024  # a document in one CSV cell is fine; the csv module's 128 KiB default is not


def read_text(path: str | Path) -> str:
    """A text file as str: UTF-8, with a leading BOM (what spreadsheets save) dropped."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except IsADirectoryError:
        raise UserError(f"{p} is a folder; pass a file") from None
    except OSError as exc:
        raise UserError(f"cannot read {p}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{p} is not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}); re-save it as "
                        f"UTF-8, e.g. `iconv -f latin1 -t utf-8 {p.name} > fixed{p.suffix}`") from None


def loads(text: str, where: str | Path) -> object:
    """JSON from text; bad or absurdly nested JSON is a one-line error naming the file (and line)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise UserError(f"{where}: JSON nested too deeply to read; flatten it") from None


def read_json(path: str | Path) -> object:
    return loads(read_text(path), path)


def csv_rows(path: str | Path) -> tuple[list[str], list[dict]]:
    """(column names, rows) of a CSV file with a header line; an empty or garbled file is a one-line error."""
    p = Path(path)
    text = read_text(p)
    if not text.strip():
        raise UserError(f"{p} is empty; a CSV needs a header line and rows")
    csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        names = list(reader.fieldnames or [])
        rows = list(reader)
    except csv.Error as exc:
        raise UserError(f"{p}: not a readable CSV ({exc}); save it as comma-separated UTF-8") from None
    return names, rows
