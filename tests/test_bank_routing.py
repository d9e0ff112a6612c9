"""Routers on a tiny bank of known PhoneBook parts, the LoRA-aware router's mixed-adapter scoring, and ask."""

from __future__ import annotations

import pytest
from bank_helpers import ROUTING_FACTS, gold_pairs, routing_bank

from loramem.answer.decode import decode
from loramem.answer.pipeline import Request, ask_many, prepare
from loramem.answer.prompt import build_prompt
from loramem.answer.session import open_session
from loramem.api import ask
from loramem.bank.resident import Resident
from loramem.bank.routing import build_router
from loramem.config import AskConfig, ask_config
from loramem.errors import UserError

N_FACTS = ROUTING_FACTS


@pytest.fixture(scope="module")
def bank(tiny_base, tmp_path_factory):
    return routing_bank(tmp_path_factory.mktemp("rbank"), tiny_base)




@pytest.mark.parametrize("kind,least", [("oracle", 1.0), ("bm25", 1.0), ("embed", 0.75)])
def test_routers_find_the_module_holding_the_fact(bank, kind, least):
    router = build_router(kind, bank.list())
    pairs = gold_pairs()
    hits = [router.route(q, 1)[0].module.name == gold for q, gold in pairs]
    assert sum(hits) / len(hits) >= least
    top3 = router.route(pairs[0][0], 3)
    assert len(top3) == 3 and len({s.module.name for s in top3}) == 3
    assert top3[0].score >= top3[1].score >= top3[2].score


def test_embed_router_stores_key_embeddings_in_the_manifest(bank):
    build_router("embed-module", bank.list(), on_new_embeddings=bank.set_embeddings)
    mods = bank.list()
    assert all(m.key_embedding is not None and m.key_embedding.shape == (384,) for m in mods)
    assert all(m.embed_model == "all-MiniLM-L6-v2" for m in mods)


def test_oracle_refuses_an_unknown_question(bank):
    with pytest.raises(UserError, match="oracle"):
        build_router("oracle", bank.list()).route("Who wrote Hamlet?", 1)


def test_lora_router_scores_every_candidate_in_one_mixed_batch(bank, tiny_base):
    res = Resident(bank, tiny_base)
    mods = bank.list()
    names = [res.ensure(m) for m in mods]
    q = gold_pairs()[0][0]
    p = build_prompt(q, tiny_base.tokenizer, "plain")
    mixed = [r.mean_logprob for r in decode(res.host, tiny_base.tokenizer, [p] * 3, 16, adapters=names)]
    alone = []
    for n in names:  # the same scores one adapter at a time
        res.activate(n)
        alone.append(decode(res.host, tiny_base.tokenizer, [p], 16)[0].mean_logprob)
    assert mixed == pytest.approx(alone, abs=1e-4)
    assert len(set(round(x, 5) for x in mixed)) == 3  # the modules really differ
    got = build_router("lora", mods, resident=res).route(q, 3)
    assert [s.module.name for s in got] == [mods[i].name for i in sorted(range(3), key=lambda i: -mixed[i])]
    res.clear()


def test_prepare_activates_the_merged_adapter_and_ask_reports_timings(bank):
    host, info = prepare(gold_pairs()[5][0], bank, ask_config(route="bm25", top_k=2, merge="ties"))
    assert [m["name"] for m in info["modules"]][0] == "people-01" and len(info["modules"]) == 2
    assert host.active_adapter == info["adapter"] and not info["merge_cached"]
    out = ask(gold_pairs()[5][0], bank, route="bm25", top_k=2, merge="ties", max_tokens=4)
    assert out["merge_cached"] and out["adapter"] == info["adapter"]
    for k in ("answer", "route_ms", "merge_ms", "generate_ms", "prompt_tokens", "completion_tokens"):
        assert k in out
    assert out["completion_tokens"] <= 4 and out["route_ms"] >= 0
    top1 = ask(gold_pairs()[0][0], bank, route="oracle", merge="none", max_tokens=4)
    assert [m["name"] for m in top1["modules"]] == ["people-00"]


def test_mixed_adapter_batch_matches_one_question_at_a_time(bank):
    qs = [q for q, _ in gold_pairs()[::4]]
    cfg = AskConfig(route="oracle", max_new_tokens=6)
    rows = ask_many(open_session(bank), [Request(q, cfg) for q in qs])
    assert [r["modules"][0]["name"] for r in rows] == ["people-00", "people-01", "people-02"]
    assert all(r["batch"] == 3 for r in rows)  # one mixed-adapter batch
    singles = [ask(q, bank, route="oracle", max_tokens=6) for q in qs]
    assert [r["answer"] for r in rows] == [r["answer"] for r in singles]
    assert [r["prompt_tokens"] for r in rows] == [r["prompt_tokens"] for r in singles]


def test_modules_of_another_base_are_refused_at_load(bank):
    from loramem.models import load_base

    other = load_base("tiny-random", seed=7)
    with pytest.raises(UserError, match="--model tiny-random"):
        Resident(bank, other).ensure(bank.get("people-00"))


@pytest.mark.parametrize("query_encoder", ["int8", "fp32"])
def test_batched_embed_routing_matches_one_at_a_time(bank, query_encoder, monkeypatch):
    from loramem.bank.routing import route_many

    monkeypatch.setenv("LORAMEM_QUERY_ENCODER", query_encoder)
    router = build_router("embed", bank.list())
    qs = [q for q, _ in gold_pairs()]
    many = route_many(router, qs, 2)
    for q, got in zip(qs, many, strict=True):
        one = router.route(q, 2)
        assert [s.module.name for s in got] == [s.module.name for s in one]
        assert [s.score for s in got] == pytest.approx([s.score for s in one], abs=1e-5)


def test_batched_lora_routing_matches_one_at_a_time(bank, tiny_base):
    """Many questions x every candidate in one mixed-adapter batch give the ranking of one question at a time."""
    from loramem.bank.routing import route_many

    res = Resident(bank, tiny_base)
    router = build_router("lora", bank.list(), resident=res)
    qs = [q for q, _ in gold_pairs()][:6]
    many = route_many(router, qs, 3)
    for q, got in zip(qs, many, strict=True):
        one = router.route(q, 3)
        assert [s.module.name for s in got] == [s.module.name for s in one]
        assert [s.score for s in got] == pytest.approx([s.score for s in one], abs=1e-3)
    res.clear()


def test_a_new_router_is_one_registered_function(bank):
    """Registered once, a router is accepted by the config, listed in the help and used by the pipeline."""
    import numpy as np

    from loramem.bank.routing import _top
    from loramem.registry import ROUTERS

    class LastModule:
        name = "last"

        def __init__(self, modules):
            self.modules = modules

        def route(self, question, k=1):
            return _top(self.modules, np.arange(len(self.modules), dtype=float), k)

    @ROUTERS.register("last", help="always the last module (test)")
    def last(modules, ctx):
        return LastModule(modules)

    try:
        assert "last: always the last module" in ROUTERS.help_text()
        out = ask(gold_pairs()[0][0], bank, route="last", max_tokens=2)
        assert out["modules"][0]["name"] == bank.list()[-1].name and out["route"] == "last"
    finally:
        ROUTERS._entries.pop("last")
    with pytest.raises(UserError, match="unknown router 'last'"):
        ask(gold_pairs()[0][0], bank, route="last", max_tokens=2)


def test_oracle_finds_a_fact_keyed_apart_from_its_question_by_its_training_question():
    import numpy as np

    from loramem.bank.rowkeys import RowKeys
    from loramem.experiments.route_cases import stub

    mods = [stub("a", "", ["Ann Lee / city"]), stub("b", "", ["Ann Lee / year"])]
    texts = ["In which city was Ann Lee born?", "In what year was Ann Lee born?"]
    keys = RowKeys.build(mods, texts, np.zeros((2, 384), np.float32), np.array([0, 1], np.int32))
    oracle = build_router("oracle", mods, keys=keys)
    assert oracle.route("in what year was  Ann Lee born?", 1)[0].module.name == "b"
    assert [s.module.name for s in oracle.route(texts[0], 2)] == ["a", "b"]
    with pytest.raises(UserError, match="oracle"):
        oracle.route("When was Ann Lee born?", 1)  # a paraphrase: no gold module the oracle can know
    with pytest.raises(UserError, match="oracle"):
        build_router("oracle", mods).route(texts[0], 1)  # without row keys only fact keys place a question


def test_answer_table_trains_once_and_asks_every_router_through_the_pipeline(tiny_base, tmp_path):
    from loramem.experiments import route_answers, route_cases

    case = route_cases.qa(8, 2, tmp_path)
    writer = {"layers": None, "steps": 2, "target_em": None}  # tiny-random has no layers 24-29
    bank, names, trained_s = route_answers.trained_bank(case, tmp_path / "cache", "tiny-random", writer)
    assert trained_s > 0 and names == ["qa-00", "qa-01"] and len(bank.list()) == 2
    assert route_answers.trained_bank(case, tmp_path / "cache", "tiny-random", writer)[2] == 0.0  # cached
    rows = route_answers.ask_all(bank, case, names, ["oracle", "bm25"], limit=4, max_new_tokens=2)
    assert [(r["questions"], r["router"], r["n"]) for r in rows] == [
        (k, name, 4) for k in ("trained", "paraphrase") for name in ("oracle", "bm25")]
    oracle = [r for r in rows if r["router"] == "oracle"]
    assert all(r["routed"] == 1.0 for r in oracle) and [r["oracle_forced"] for r in oracle] == [False, True]
    frac = route_answers.ratios([{"router": "oracle", "em": 0.8, "n": 10}, {"router": "embed", "em": 0.4, "n": 10},
                                 {"router": "oracle", "em": 1.0, "n": 30}, {"router": "embed", "em": 1.0, "n": 30}])
    assert frac == {"oracle": 1.0, "embed": pytest.approx(34 / 38)}
