"""The top-level Python API a notebook user types: `loramem.write`, `loramem.Bank`, `loramem.ask`, with paths and
names as readily as objects; and portable exports (hub id as base, a model card) that plain PEFT loads."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from bank_helpers import QUICK, phonebook_file

import loramem
from loramem.errors import UserError


def test_import_is_cheap_and_documents_the_api():
    code = ("import sys, loramem; assert 'torch' not in sys.modules; loramem.write; loramem.Bank; loramem.ask; "
            "loramem.datasheet; assert 'torch' not in sys.modules; print(loramem.__version__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == loramem.__version__
    assert {"write", "Bank", "ask", "datasheet", "__version__"} <= set(dir(loramem))
    import pydoc

    text = pydoc.render_doc(loramem, renderer=pydoc.plaintext)
    assert "loramem.write(" in text and "class Bank" in text and "ask(question" in text


def test_write_ask_ls_verify_export_with_paths_and_objects(tmp_path, tiny_base):
    from peft import PeftModel

    from loramem.models import TINY_RANDOM_ID, _tiny_random

    train = phonebook_file(tmp_path, 4)
    rec = loramem.write(train, bank=tmp_path / "b", name="people", model="tiny-random",
                        data_license="CC0-1.0 (synthetic)", **QUICK)
    assert rec["modules"] == ["people@v1"] and rec["steps"] == 2 and rec["seconds"] > 0
    assert 0 <= rec["exact_match"] <= 1 and rec["data_license"] == "CC0-1.0 (synthetic)"
    bank = loramem.Bank(tmp_path / "b")
    # inline facts and a loaded Base work the same as a file and a model name
    bank.write([("Question: What is the colour of the sky? Answer:", " blue")], name="sky", model=tiny_base,
               **QUICK)
    assert [m["name"] for m in bank.ls()] == ["people", "sky"] and bank.verify().ok
    r = loramem.ask("What is the phone number of nobody?", bank=str(tmp_path / "b"), route="bm25", max_tokens=3)
    assert set(r) >= {"answer", "modules"} and r["modules"][0]["name"] in ("people", "sky")
    assert bank.ask("What is the phone number of nobody?", route="bm25", max_tokens=3)["answer"] == r["answer"]

    out = tmp_path / "export"
    bank.export(out)
    conf = json.loads((out / "people" / "adapter_config.json").read_text())
    assert conf["base_model_name_or_path"] == TINY_RANDOM_ID  # an id, not a path nor "tiny-random(seed=0)"
    card = (out / "people" / "README.md").read_text()
    for needle in (TINY_RANDOM_ID, rec["data_hash"], "rank 4", f"{rec['exact_match']:.3f} (teacher-forced",
                   "CC0-1.0 (synthetic)", "2 steps",
                   "--enable-lora", "PeftModel.from_pretrained", "not on the Hugging Face hub"):
        assert needle in card, needle
    written = json.loads((out / "people" / "loramem.json").read_text())
    assert written["base"]["hub_id"] == TINY_RANDOM_ID and written["base"]["fingerprint"] == tiny_base.fingerprint
    plain = PeftModel.from_pretrained(_tiny_random(0, torch.device("cpu")).model, str(out / "people")).eval()
    assert plain.peft_config["default"].base_model_name_or_path == TINY_RANDOM_ID


def test_api_mistakes_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="name="):
        loramem.write([("q", "a")], bank=tmp_path / "b", model="tiny-random")
    with pytest.raises(UserError, match="unknown writer option"):
        loramem.write([("q", "a")], bank=tmp_path / "b", name="x", model="tiny-random", rnak=4)
    with pytest.raises(UserError, match="prompt, answer"):
        loramem.write([42], out=tmp_path / "m", model="tiny-random", **QUICK)
