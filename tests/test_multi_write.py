"""Many modules in one pass (`write_modules`): the same modules as one at a time, each a plain PEFT folder."""

from __future__ import annotations

import json

import pytest
import torch

from loramem.config import WriterConfig
from loramem.data import phonebook
from loramem.forward import IGNORE, collate, concat_batches, logits_at
from loramem.lanes import Lanes
from loramem.models import load_base
from loramem.writer import WriteJob, write_module, write_modules
from tests.conftest import run_cli

SIZES = ((20, 1, 4), (13, 2, 2), (7, 3, 8))  # entries, seed, rank: three different modules


def _jobs(prefix: str, **over) -> list[WriteJob]:
    out = []
    for i, (n, seed, rank) in enumerate(SIZES):
        cfg = WriterConfig(rank=rank, seed=seed, steps=6, target_em=None, progress=False, lr=1e-2, batch_size=4, **over)
        out.append(WriteJob([e.example() for e in phonebook.generate(n, seed)], cfg, adapter=f"{prefix}{i}"))
    return out


def _lora(host, adapter: str) -> dict[str, torch.Tensor]:
    return {n.replace(f".{adapter}.", ".X."): p.detach().clone() for n, p in host.named_parameters()
            if f".{adapter}." in n}


@pytest.fixture(scope="module")
def f64_base():
    """tiny-random in float64: Adam turns fp32 rounding in near-zero gradients into steps of +-lr, so an exact
    comparison of two summation orders needs the rounding far below Adam's eps."""
    base = load_base("tiny-random", cache=False)
    base.model.double()
    return base


@pytest.mark.parametrize("layers", [None, "1-1"], ids=["every-layer-shared-prefix", "top-layer-prefix-cache"])
def test_together_equals_one_by_one(f64_base, layers):
    alone = []
    for job in _jobs("alone", layers=layers):
        res = write_module(job.examples, f64_base, job.cfg, adapter=job.adapter)
        alone.append((_lora(res.model, job.adapter), res.record))
        res.model.delete_adapter(job.adapter)
    together = write_modules(_jobs("tog", layers=layers), f64_base, together=8)
    for (want, rec), res in zip(alone, together, strict=True):
        got = _lora(res.model, res.adapter)
        assert got.keys() == want.keys() and got
        worst = max((got[k] - want[k]).abs().max().item() for k in want)
        assert worst < 1e-6, worst
        assert res.record["steps"] == rec["steps"] == 6
        assert res.record["final_loss"] == pytest.approx(rec["final_loss"], rel=1e-6)  # the loss is fp32 (logits are)
        assert res.record["modules_together"] == 3 and rec["modules_together"] == 1
        assert res.record["prefix_cache_layer"] == rec["prefix_cache_layer"] == (1 if layers else 0)
        res.model.delete_adapter(res.adapter)


def test_lanes_forward_is_peft_forward(tiny_base):
    """Each row group through its own adapter gives what PEFT gives with that adapter active, shared prefix too."""
    res = write_modules(_jobs("lane"), tiny_base, together=8)
    host = res[0].model
    pad = tiny_base.tokenizer.pad_token_id
    parts = [collate(r.rendered, list(range(4)), pad) for r in res]
    want = []
    with torch.no_grad():
        for r, p in zip(res, parts, strict=True):
            host.set_adapter(r.adapter)
            want.append(logits_at(host, p, p.labels != IGNORE))
        lanes = Lanes(host, [r.adapter for r in res])
        b = concat_batches(parts, pad)
        with lanes.on():
            lanes.rows = [4, 4, 4]
            for share in (False, True):
                got = logits_at(host, b, b.labels != IGNORE, share_prefix=share, lanes=lanes)
                assert torch.allclose(got, torch.cat(want), atol=1e-4, rtol=0)
    for r in res:
        host.delete_adapter(r.adapter)


def test_each_folder_loads_in_plain_peft(tiny_base, tmp_path):
    from peft import PeftModel

    jobs = _jobs("saved")
    for j in jobs:
        j.out = tmp_path / j.adapter
    res = write_modules(jobs, tiny_base, together=8)
    host = res[0].model
    fresh = load_base("tiny-random", cache=False)
    ids = torch.tensor([res[0].rendered[0].ids])
    for r in res:
        host.set_adapter(r.adapter)
        with torch.no_grad():
            want = host(input_ids=ids).logits
        plain = PeftModel.from_pretrained(fresh.model, str(tmp_path / r.adapter))
        with torch.no_grad():
            got = plain(input_ids=ids).logits
        assert torch.allclose(got, want, atol=1e-5), r.adapter
        assert json.loads((tmp_path / r.adapter / "loramem.json").read_text())["modules_together"] == 3
        fresh.model = plain.unload()
    for r in res:
        host.delete_adapter(r.adapter)


def test_partitioned_write_trains_in_one_pass(tmp_path):
    data = phonebook.write(phonebook.generate(12, 0), tmp_path / "pb.csv")
    r = run_cli("write", str(data), "--bank", str(tmp_path / "B"), "--name", "pb", "--partition", "3",
                "--model", "tiny-random", "--steps", "3", "--layers", "1-1", "--json")  # prefix cache: one pass on CPU
    assert r.returncode == 0, r.stderr[-2000:]
    recs = [json.loads(p.read_text()) for p in sorted((tmp_path / "B").rglob("loramem.json"))]
    assert len(recs) == 3 and {x["modules_together"] for x in recs} == {3}
    assert sorted(x["n_examples"] for x in recs) == [4, 4, 4]


def test_the_writer_steps_as_a_plain_peft_loop_does(f64_base):
    """Same init, same batches: the writer (lanes, shared prefix, logits at supervised positions) and a plain
    PyTorch + PEFT loop (full forward, AdamW) end with the same weights, step for step."""
    import random

    from peft import get_peft_model

    from loramem.adapters import attach, lora_config
    from loramem.forward import length_batches

    examples = [e.example() for e in phonebook.generate(20, 3)]
    cfg = WriterConfig(rank=4, seed=5, steps=7, target_em=None, progress=False, lr=1e-2, batch_size=4)
    torch.manual_seed(cfg.seed)  # the writer's own init, drawn the way it draws it
    init = _lora(attach(f64_base, lora_config(cfg, f64_base), "probe"), "probe")
    f64_base.extra["peft"].delete_adapter("probe")
    res = write_module(examples, f64_base, cfg, adapter="steps")
    got = _lora(res.model, "steps")
    res.model.delete_adapter("steps")

    fresh = load_base("tiny-random", cache=False)
    plain = get_peft_model(fresh.model.double(), lora_config(cfg, fresh))
    params = dict(plain.named_parameters())
    with torch.no_grad():
        for k, v in init.items():
            params[k.replace(".X.", ".default.")].copy_(v)
    opt = torch.optim.AdamW([p for n, p in params.items() if "lora_" in n], lr=cfg.lr, weight_decay=0.0)
    rng, queue, items = random.Random(cfg.seed), [], res.rendered
    plain.train()
    for _ in range(cfg.steps):
        queue = queue or length_batches(items, cfg.batch_size, rng)
        b = collate(items, queue.pop(), fresh.tokenizer.pad_token_id)
        m = b.labels != IGNORE
        loss = torch.nn.functional.cross_entropy(plain(input_ids=b.input_ids, attention_mask=b.attention_mask)
                                                 .logits[m].float(), b.labels[m])
        opt.zero_grad()
        loss.backward()
        opt.step()
    want = {k.replace(".default.", ".X."): p.detach() for k, p in params.items() if "lora_" in k}
    assert got.keys() == want.keys() and got
    assert max((got[k] - want[k]).abs().max().item() for k in want) < 1e-9
