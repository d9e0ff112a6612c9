"""PhoneBook: the paper's released files read as they are; generated books are deterministic and collision-free."""

from __future__ import annotations

import re

import pytest

from loramem.data import phonebook
from loramem.errors import UserError
from loramem.formats import knowledge_tokens

NUMBER = re.compile(r"^\d{3}-\d{3}-\d{4}$")


def test_reads_paper_csv_and_eval_json(paper_dir):
    book = phonebook.read(paper_dir / "pb_cf" / "phonebook_qa_1K.csv")
    assert len(book) == 48  # the paper's "1K" = 48 entries under Llama-3.1
    assert book[0] == phonebook.Entry("Jeffrey Buck", "603-556-7631")
    assert all(NUMBER.match(e.number) for e in book)
    evals = phonebook.read(paper_dir / "pb_cf" / "phonebook_eval_qa_1K.json")
    assert evals[0] == book[0]
    assert {e.name for e in evals} <= {e.name for e in book}


def test_reads_128k_sectors_with_routing_meta(paper_dir):
    sectors = phonebook.read_sectors(paper_dir / "pb_cf" / "phonebook_qa_128K_routing_meta.json")
    assert [s.index for s in sectors] == list(range(16))
    whole = phonebook.read(paper_dir / "pb_cf" / "phonebook_qa_128K.csv")
    assert sum(len(s.entries) for s in sectors) == len(whole)
    assert {e.name for s in sectors for e in s.entries} == {e.name for e in whole}


def test_generate_is_deterministic_collision_free_and_round_trips(tmp_path):
    a, b, c = phonebook.generate(300, seed=7), phonebook.generate(300, seed=7), phonebook.generate(300, seed=8)
    assert a == b and a != c
    assert len({e.name for e in a}) == 300 and len({e.number for e in a}) == 300
    assert all(NUMBER.match(e.number) for e in a)
    path = phonebook.write(a, tmp_path / "pb.csv")
    assert path.read_text().splitlines()[1] == f"Question: What is the phone number of {a[0].name}? Answer: {a[0].number}"
    assert phonebook.read(path) == a


def test_size_in_tokens_counts_the_formatted_rows(tiny_base):
    tok = tiny_base.tokenizer
    book = phonebook.generate_tokens(1000, tok, seed=0)
    used = knowledge_tokens([e.example() for e in book], tok)
    assert used <= 1000
    more = phonebook.generate(len(book) + 1, seed=0)
    assert knowledge_tokens([e.example() for e in more], tok) > 1000 or more[:len(book)] != book
    assert phonebook.parse_size("2.5K") == 2500 and phonebook.parse_size("700") == 700


@pytest.mark.parametrize("content,needle", [
    ("name,number\nA,1\n", "columns"),
    ("text\nthis is not a row\n", "is not 'Question"),
    ("text\n", "no entries"),
])
def test_bad_files_give_one_line_errors(tmp_path, content, needle):
    p = tmp_path / "bad.csv"
    p.write_text(content)
    with pytest.raises(UserError) as e:
        phonebook.read(p)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_missing_file_names_the_fix(tmp_path):
    with pytest.raises(UserError, match="not found"):
        phonebook.read(tmp_path / "nope.csv")
