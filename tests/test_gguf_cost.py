"""What the GGUF base costs: Q4_1 rounding as llama.cpp does it, its inverse stand-in, and one module read on
two copies of its base (trained on the rounded one, read by the original), on tiny-random."""

from __future__ import annotations

import torch

from loramem.gguf_cost import BLOCK, cross_read, perturbed_model, q4_1_jitter, q4_1_round


def test_q4_1_round_trip_is_a_16_level_grid_per_block_within_half_a_step():
    w = torch.randn(8, 2 * BLOCK + 5, generator=torch.Generator().manual_seed(0))  # a ragged last block
    r = q4_1_round(w)
    assert r.shape == w.shape and not torch.equal(r, w)
    flat, rflat = w.reshape(-1), r.reshape(-1)
    for s in range(0, flat.numel() - BLOCK, BLOCK):
        blk, got = flat[s:s + BLOCK], rflat[s:s + BLOCK]
        step = (blk.max() - blk.min()) / 15
        assert len(torch.unique(got)) <= 16 and (got - blk).abs().max() <= step / 2 + 1e-6
        assert torch.isclose(got.min(), blk.min()) and torch.isclose(got.max(), blk.max())
    assert torch.allclose(q4_1_round(r), r, atol=1e-6)  # already on the grid: stays there
    j = q4_1_jitter(r, torch.Generator().manual_seed(1))
    assert not torch.equal(j, r) and torch.allclose(q4_1_round(j), r, atol=(w.max() - w.min()).item() / 15)


def test_module_trained_on_the_rounded_base_is_read_by_both(tiny_base, tmp_path):
    from loramem.config import WriterConfig
    from loramem.data import phonebook
    from loramem.models import Base, _tiny_random, fingerprint
    from loramem.writer import write_module

    hub = _tiny_random(0, torch.device("cpu")).model  # plays the hub's weights
    gguf = perturbed_model(hub, "round")  # plays the dequantized GGUF
    assert not torch.equal(gguf.model.layers[0].mlp.up_proj.weight, hub.model.layers[0].mlp.up_proj.weight)
    assert torch.equal(gguf.model.norm.weight, hub.model.norm.weight)  # 1-D tensors are not quantized
    fresh = perturbed_model(gguf, "round")
    gbase = Base(name="tiny-q4_1", model=fresh, tokenizer=tiny_base.tokenizer, fingerprint=fingerprint(fresh),
                 device=torch.device("cpu"), source="tiny-random rounded to Q4_1")
    assert gbase.fingerprint != fingerprint(hub)
    facts = [e.example() for e in phonebook.generate(3, 0)]
    write_module(facts, gbase, WriterConfig(rank=4, steps=3, target_em=None, progress=False), out=tmp_path / "m")
    got = cross_read(tmp_path / "m", facts, gbase, {"gguf_base": gguf, "hub_base": hub})
    assert got["n"] == 3 and 0 <= got["gguf_base"] <= 1 and 0 <= got["hub_base"] <= 1
