"""The writer on tiny-random: it learns, saves a standard PEFT folder with a run record, Ctrl-C keeps the best
adapter, and a module of another base is refused. (Teacher-forced verdict == generation is checked in
test_real_model.py, on a module that recalls its facts: tiny-random cannot learn to stop, so there every verdict
would be False and a check that always says "no" would pass.)"""

from __future__ import annotations

import json
import math

import pytest
import torch

from loramem.adapters import load_adapter
from loramem.config import WriterConfig
from loramem.data import phonebook
from loramem.errors import UserError
from loramem.writer import write_module

FACTS = [e.example() for e in phonebook.generate(6, seed=3)]


def _cfg(**kw):
    base = dict(rank=8, lr=1e-2, steps=40, batch_size=6, eval_every=10, progress=False, seed=0)
    return WriterConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(tiny_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("mod") / "m"
    return write_module(FACTS, tiny_base, _cfg(), out=out, adapter="wtest")


def test_writer_learns_and_records_the_run(trained, tiny_base):
    rec = trained.record
    # a random 2-layer model does not memorize phone numbers in 40 steps; it must still learn (the real model's
    # memorization to exact match 1.0 is tested in test_real_model.py)
    assert rec["final_loss"] < 0.6 * rec["first_loss"], (rec["first_loss"], rec["final_loss"])
    assert rec["n_params"] > 0 and rec["tokens_seen"] > 0 and rec["steps"] == 40
    assert rec["base"]["fingerprint"] == tiny_base.fingerprint
    saved = json.loads((trained.path / "loramem.json").read_text())
    assert saved["data_hash"] == rec["data_hash"] and saved["config"]["rank"] == 8
    assert (trained.path / "adapter_model.safetensors").is_file()
    assert json.loads((trained.path / "adapter_config.json").read_text())["r"] == 8


def test_saved_folder_loads_with_plain_peft(trained, tiny_base):
    import peft

    from loramem.models import load_base

    host = load_adapter(tiny_base, trained.path, "wmine")
    ids = torch.tensor([trained.rendered[0].ids])
    with torch.no_grad():
        mine = host(input_ids=ids).logits
    host.delete_adapter("wmine")
    fresh_base = load_base("tiny-random", seed=0, cache=False).model  # same seed: the same weights, no loramem
    plain = peft.PeftModel.from_pretrained(fresh_base, str(trained.path)).eval()
    with torch.no_grad():
        theirs = plain(input_ids=ids).logits
    assert torch.allclose(mine, theirs, atol=1e-4)


def test_interrupt_keeps_the_best_adapter(tiny_base, tmp_path):
    def stop(info):
        if info["step"] == 20:
            raise KeyboardInterrupt

    res = write_module(FACTS, tiny_base, _cfg(target_em=None), out=tmp_path / "m", adapter="wint", on_step=stop)
    assert res.record["stopped"] == "interrupted" and res.record["steps"] == 20
    assert (tmp_path / "m" / "adapter_model.safetensors").is_file()
    assert res.record["exact_match"] == max([em for _, em in res.record["em_history"]] + [res.record["exact_match"]])
    res.model.delete_adapter("wint")


def test_sequence_loss_and_chat_user_format_train(tiny_base):
    res = write_module(FACTS[:2], tiny_base, _cfg(loss="sequence", format="chat-user", steps=5, target_em=None),
                       adapter="wseq")
    assert res.record["steps"] == 5 and res.record["config"]["loss"] == "sequence"
    res.model.delete_adapter("wseq")


def test_module_of_another_base_is_refused(trained, tiny_base, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(trained.path, other)
    rec = json.loads((other / "loramem.json").read_text())
    rec["base"]["fingerprint"] = "0" * 16
    (other / "loramem.json").write_text(json.dumps(rec))
    with pytest.raises(UserError, match="base"):
        load_adapter(tiny_base, other, "wother")


def test_paper_recipe_is_the_authors_settings():
    cfg = WriterConfig.preset("paper", rank=16)
    assert (cfg.alpha, cfg.dropout, cfg.lr, cfg.schedule, cfg.batch_size, cfg.steps, cfg.loss, cfg.format) == (
        16, 0.1, 5e-5, "cosine", 8, 1500, "sequence", "chat-user")
    assert cfg.target_em is None


def test_hidden_before_stops_at_the_layer_and_matches_the_full_pass(tiny_base):
    """The prefix cache's states: the input of layer L from the lower layers alone, as a full pass records it."""
    from loramem.formats import render
    from loramem.forward import collate, hidden_before

    items = [render(e.example(), tiny_base.tokenizer, "plain") for e in phonebook.generate(3, seed=2)]
    b = collate(items, [0, 1, 2], tiny_base.tokenizer.pad_token_id)  # different lengths: padded rows
    decoder = tiny_base.model.get_decoder()
    with torch.no_grad():
        full = decoder(input_ids=b.input_ids, attention_mask=b.attention_mask, output_hidden_states=True)
    ran = []
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, layer in enumerate(decoder.layers)]
    try:
        h = hidden_before(tiny_base.model, b, 1)
    finally:
        for x in hooks:
            x.remove()
    assert ran == [0]  # layer 1 and above never ran
    assert torch.allclose(h, full.hidden_states[1], atol=1e-6)
    assert torch.allclose(hidden_before(tiny_base.model, b, 0), full.hidden_states[0])


def test_shared_prefix_forward_equals_the_full_pass(tiny_base):
    """Running the batch's common prefix once gives the same logits and the same LoRA gradients."""
    from loramem.adapters import adapter_params, attach, lora_config
    from loramem.formats import render
    from loramem.forward import collate, logits_at, shared_prefix_len

    facts = [e.example() for e in phonebook.generate(8, seed=5)]
    items = [render(e, tiny_base.tokenizer, "plain") for e in facts]
    host = attach(tiny_base, lora_config(WriterConfig(rank=4), tiny_base), "wshare")
    params = adapter_params(host, "wshare")
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.05)  # lora_B starts at zero; make the adapter matter
    b = collate(items, list(range(8)), tiny_base.tokenizer.pad_token_id)
    mask = b.labels != -100
    assert shared_prefix_len(b, mask) >= 8  # "Question: What is the phone number of"

    def run(share):
        for p in params:
            p.grad = None
        logits = logits_at(host, b, mask, share_prefix=share)
        torch.nn.functional.cross_entropy(logits, b.labels[mask]).backward()
        return logits.detach(), [p.grad.clone() for p in params]

    try:
        full, g_full = run(False)
        part, g_part = run(True)
    finally:
        for p in params:
            p.requires_grad_(False)
        host.delete_adapter("wshare")
    assert full.shape == part.shape
    assert torch.allclose(full, part, atol=1e-4, rtol=1e-4)
    for a, c in zip(g_full, g_part, strict=True):
        assert torch.allclose(a, c, atol=1e-5 + 1e-3 * a.abs().max().item(), rtol=0)


def test_running_estimate_replaces_per_epoch_checks(tiny_base):
    """Without eval_every, exact match is estimated from the training passes; the full teacher-forced check runs only
    when the estimate reaches the target (never, for tiny-random here) and once at the end."""
    res = write_module(FACTS, tiny_base, _cfg(steps=12, batch_size=3, eval_every=None, target_em=1.0),
                       adapter="wonline")
    rec = res.record
    assert rec["stopped"] == "steps" and rec["em_history"] == [[12, rec["exact_match"]]]
    assert [s for s, _ in rec["em_running"]] == [2, 4, 6, 8, 10, 12]  # one estimate per epoch of 2 batches
    assert all(0.0 <= em <= 1.0 for _, em in rec["em_running"])
    res.model.delete_adapter("wonline")


def test_min_steps_lifts_an_epoch_budget_that_gives_a_small_set_too_few_updates(tiny_base):
    """An epoch budget on 6 facts in batches of 3 is 2 steps an epoch: 2 epochs are 4 steps, and min_steps raises
    that to 9 (a capacity grid's smallest sizes would otherwise train a few dozen steps); it never lowers a budget,
    and explicit steps still win."""
    def steps(**kw):
        res = write_module(FACTS, tiny_base, _cfg(**{"batch_size": 3, "target_em": None, "steps": None, **kw}),
                           adapter="wmin")
        res.model.delete_adapter("wmin")
        return res.record["steps"]

    assert steps(epochs=2) == 4
    assert steps(epochs=2, min_steps=9) == 9
    assert steps(epochs=6, min_steps=9) == 12
    assert steps(epochs=2, min_steps=9, steps=5) == 5
    with pytest.raises(ValueError, match="min_steps must be in"):
        WriterConfig(min_steps=0)


def test_a_bf16_shortcut_passes_when_it_is_as_close_to_fp32_as_the_bf16_full_pass(tiny_base):
    """Under bf16 autocast the shortcut is judged against the fp32 logits: no further from them than the bf16 full
    pass is (the real model: both bf16 paths differ by ~2% of the logit scale, as each does from fp32)."""
    import contextlib

    from loramem.forward import _same_logits

    model = tiny_base.model
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731 - what writer.autocast_for returns
    exact = torch.linspace(-30, 30, 64).reshape(4, 16)
    full = exact + 0.6 * torch.sign(torch.sin(torch.arange(64.0))).reshape(4, 16)  # bf16 full pass: 0.6 off
    near = exact - 0.5  # the shortcut: 0.5 off fp32, 1.1 off the bf16 full pass
    far = exact + 3.0
    assert not _same_logits(model, bf16, full, near)  # without a reference: the plain tolerance says no
    assert _same_logits(model, bf16, full, near, exact=lambda: exact)
    assert not _same_logits(model, bf16, full, far, exact=lambda: exact)
    assert not _same_logits(model, contextlib.nullcontext, full, near, exact=lambda: exact)  # fp32: exact or nothing


def test_loramem_precision_sets_the_default_training_precision(monkeypatch):
    from loramem.writer import precision_for

    cpu = torch.device("cpu")
    monkeypatch.setenv("LORAMEM_PRECISION", "fp32")
    assert precision_for("auto", cpu) == "fp32"
    monkeypatch.setenv("LORAMEM_PRECISION", "bf16")
    assert precision_for("auto", cpu) == "bf16" and precision_for("fp32", cpu) == "fp32"  # a config's choice wins
    monkeypatch.setenv("LORAMEM_PRECISION", "fp8")
    with pytest.raises(UserError, match="LORAMEM_PRECISION='fp8' is not one of auto, fp32, bf16"):
        precision_for("auto", cpu)


def test_lr_schedules_are_transformers_schedules():
    import torch

    from loramem.writer import lr_scheduler

    def lrs(schedule: str, warmup: int = 0) -> list[float]:
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = lr_scheduler(opt, WriterConfig(schedule=schedule, warmup_steps=warmup), total=10)
        out = []
        for _ in range(10):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    assert lrs("constant") == [1.0] * 10
    assert lrs("constant", warmup=2)[:3] == [0.0, 0.5, 1.0]
    assert lrs("linear") == pytest.approx([1 - i / 10 for i in range(10)])
    cos = lrs("cosine")
    assert cos[0] == 1.0 and cos[5] == pytest.approx(0.5) and cos[9] == pytest.approx(0.5 * (1 + math.cos(0.9 * math.pi)))
