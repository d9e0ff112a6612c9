"""One road: the same question over the same module, in each format the writer knows, gets the same prompt token
ids and the same answer from `loramem ask` (with and without --overflow truncate), the Python API, the server
(the real openai client over HTTP) and `loramem eval --generate`."""

from __future__ import annotations

import json

import openai
import pytest
from bank_helpers import QUICK, RunningServer, free_port, make_bank
from typer.testing import CliRunner

from loramem.data import phonebook

FORMATS = ("plain", "chat", "chat-user")
WHO = {"plain": "Ann Lee", "chat": "Bob Stone", "chat-user": "Cara Diaz"}


@pytest.fixture(scope="module")
def road(tmp_path_factory, tiny_base):
    from loramem.config import ServeConfig
    from loramem.serve import create_app

    root = tmp_path_factory.mktemp("road")
    bank = None
    for i, fmt in enumerate(FORMATS):
        f = phonebook.write([phonebook.Entry(WHO[fmt], f"{i}11-222-3333")], root / f"{fmt}.csv")
        bank = make_bank(root / "bank", tiny_base, f, name=fmt.replace("-", ""), partition=None,
                         cfg={**QUICK, "format": fmt})
    port = free_port()
    app = create_app(bank.root, "tiny-random", ServeConfig(port=port))
    with RunningServer(app, port) as srv:
        yield {"bank": bank, "root": root, "url": f"{srv.url}/v1"}


def _cli(*args: str) -> dict:
    from loramem.cli import app

    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_road_builds_the_same_prompt_and_gives_the_same_answer(road, fmt):
    import loramem

    q = f"What is the phone number of {WHO[fmt]}?"
    bank = str(road["bank"].root)
    common = ("ask", q, "--bank", bank, "--route", "oracle", "--max-tokens", "8", "--json")
    cli = _cli(*common)
    truncated = _cli(*common, "--overflow", "truncate")
    api = loramem.ask(q, bank, route="oracle", max_tokens=8)
    client = openai.OpenAI(base_url=road["url"], api_key="none", max_retries=0)
    served = client.chat.completions.create(model="loramem", messages=[{"role": "user", "content": q}],
                                            max_tokens=8, extra_body={"route": "oracle"})
    extra = served.model_extra["loramem"]
    module = road["bank"].path(road["bank"].get(fmt.replace("-", "")))
    data = road["root"] / f"{fmt}.csv"
    evaluated = _cli("eval", str(module), "--data", str(data), "--model", "tiny-random", "--generate", "--json")
    pred = evaluated["predictions"][0]

    assert cli["format"] == fmt and cli["modules"][0]["name"] == fmt.replace("-", "")
    hashes = {cli["prompt_hash"], truncated["prompt_hash"], api["prompt_hash"], extra["prompt_hash"],
              pred["prompt_hash"]}
    assert len(hashes) == 1, (cli["prompt_hash"], truncated["prompt_hash"], api["prompt_hash"], extra["prompt_hash"],
                              pred["prompt_hash"])
    tokens = {cli["prompt_tokens"], truncated["prompt_tokens"], api["prompt_tokens"], served.usage.prompt_tokens,
              pred["prompt_tokens"]}
    assert len(tokens) == 1
    answers = {cli["answer"], truncated["answer"], api["answer"], served.choices[0].message.content}
    assert len(answers) == 1, answers
    # eval decodes up to the gold answer's length + 8 tokens, the others 8: the same greedy start
    assert pred["prediction"].startswith(cli["answer"]) or cli["answer"].startswith(pred["prediction"])


def test_the_prompt_is_the_one_the_module_was_trained_on(road, tiny_base):
    """Without context, the prompt ids are exactly the prompt part of the training row, in every format."""
    from loramem.answer.prompt import build_prompt
    from loramem.formats import render

    for fmt in FORMATS:
        e = phonebook.Entry(WHO[fmt], "111-222-3333").example()
        trained = render(e, tiny_base.tokenizer, fmt).prompt_ids
        assert build_prompt(e.prompt.removeprefix("Question: ").removesuffix(" Answer:"), tiny_base.tokenizer,
                            fmt).ids == trained
        with_context = build_prompt(f"What is the phone number of {WHO[fmt]}?", tiny_base.tokenizer, fmt,
                                    ["Some context."])
        # the context goes inside the template: its opening tokens come first, the question and template end last
        assert with_context.ids[-8:] == trained[-8:] and len(with_context.ids) > len(trained)
        if fmt != "plain":
            assert with_context.ids[:3] == trained[:3]
