"""The writer benchmark's baselines measure what they claim: the competent loop's teacher-forced check gives the
writer's verdicts, its labels supervise the writer's tokens, its batches cover every fact once an epoch, and the
GEMM probe returns a rate for each of the model's Linear shapes."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest
import torch

from loramem.data import phonebook
from loramem.formats import Rendered, render
from loramem.forward import collate
from loramem.models import load_base
from loramem.reads import exact_match_items

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "writer_throughput.py"


@pytest.fixture(scope="module")
def wt():
    spec = importlib.util.spec_from_file_location("writer_throughput", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def fresh():
    return load_base("tiny-random", cache=False)  # not the session's shared base, which other tests wrap


def _own_continuations(base, n_new: int = 3) -> tuple[list[Rendered], list[bool]]:
    """Rows whose answer is the model's own greedy continuation (right) or that with its last token changed
    (wrong), from prompts of different lengths, so the check sees padding and both verdicts."""
    tok, model = base.tokenizer, base.model
    items, truth = [], []
    for k, e in enumerate(phonebook.generate(6, seed=5)):
        prompt = tuple(tok(e.example().prompt + " x" * k).input_ids)
        with torch.no_grad():
            gen = model.generate(torch.tensor([prompt]), max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                                 pad_token_id=tok.pad_token_id)[0, len(prompt):].tolist()
        right = k % 2 == 0
        if not right:
            gen[-1] = (gen[-1] + 1) % len(tok)
        items.append(Rendered(ids=prompt + tuple(gen), answer_start=len(prompt), answer_end=len(prompt) + n_new))
        truth.append(right)
    return items, truth


def test_competent_check_gives_the_writers_verdicts(wt, fresh):
    items, truth = _own_continuations(fresh)
    pad = fresh.tokenizer.pad_token_id
    assert wt.teacher_forced_em(fresh.model, items, pad, batch_size=4) == truth
    assert exact_match_items(fresh.model, items, pad) == truth


def test_competent_labels_supervise_the_writers_tokens(wt, fresh):
    items = [render(e.example(), fresh.tokenizer, "plain") for e in phonebook.generate(5, seed=1)]
    pad = fresh.tokenizer.pad_token_id
    ids, att, labels, tokens = wt.padded(items, [0, 1, 2, 3, 4], pad)
    b = collate(items, [0, 1, 2, 3, 4], pad)  # the writer's batch: labels already shifted
    assert torch.equal(ids, b.input_ids) and torch.equal(att, b.attention_mask) and tokens == b.tokens
    assert torch.equal(labels[:, 1:], b.labels[:, :-1])


def test_length_grouped_batches_cover_every_fact_once_an_epoch(wt):
    items = [Rendered(ids=(1,) * n, answer_start=n - 2, answer_end=n) for n in [9, 4, 7, 4, 12, 7, 5, 9, 6, 4]]
    rng = random.Random(0)
    epochs = [wt.length_grouped(items, 3, rng) for _ in range(4)]
    for batches in epochs:
        assert sorted(i for b in batches for i in b) == list(range(len(items)))
        assert max(len(b) for b in batches) == 3
        # chunks of the length-sorted rows: no batch's rows overlap another batch's length range
        spans = sorted((min(len(items[i].ids) for i in b), max(len(items[i].ids) for i in b)) for b in batches)
        assert all(hi <= lo2 for (_, hi), (lo2, _) in zip(spans, spans[1:], strict=False)), spans
    assert len({tuple(map(tuple, b)) for b in epochs}) > 1  # the batch order changes between epochs


def test_gemm_probe_rates_every_linear_shape(wt, fresh):
    shapes = wt.linear_shapes(fresh.model)
    assert (64, len(fresh.tokenizer)) in shapes  # lm_head, tied to the embedding but still a Linear
    assert sum(shapes.values()) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer
    rows = wt.gemm_probe({k: v for k, v in shapes.items() if k[1] < 1000}, m=32, repeats=3)
    assert len(rows) == 2 * (len(shapes) - 1) and all(r["flop_per_s"] > 0 for r in rows)
    rates = [r["flop_per_s"] for r in rows]
    assert min(rates) <= wt.gemm_mix_rate(rows) <= max(rates)
