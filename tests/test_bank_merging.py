"""Merging: a one-module merge is the module itself, cat is exactly the sum of updates, every method yields an
adapter plain PEFT loads, merges are cached, and DARE is seeded."""

from __future__ import annotations

import pytest
import torch
from bank_helpers import make_bank, phonebook_file

from loramem.bank.merging import Factors, merge_into, merge_layers, merge_weights
from loramem.bank.resident import Resident
from loramem.config import MergeConfig
from loramem.errors import UserError
from loramem.registry import MERGES as REGISTRY

IDS = torch.tensor([[1, 50, 60, 70, 80, 90]])
MERGES = [m for m in REGISTRY.names() if m != "none"]
PEFT_MERGES = [m for m in MERGES if REGISTRY.entry(m).meta.get("peft")]


@pytest.fixture(scope="module")
def bank(tiny_base, tmp_path_factory):
    d = tmp_path_factory.mktemp("mbank")
    # a few real steps so the updates are not zero; rsLoRA with alpha != rank exercises PEFT's scaling paths
    return make_bank(d / "bank", tiny_base, phonebook_file(d, 9), partition=3,
                     cfg=dict(rank=4, alpha=16, rslora=True, steps=5, lr=1e-2, progress=False, target_em=None))


@pytest.fixture()
def res(bank, tiny_base):
    r = Resident(bank, tiny_base)
    yield r
    r.clear()


def logits(host, adapter):
    host.set_adapter(adapter)
    with torch.no_grad():
        return host(input_ids=IDS).logits


@pytest.mark.parametrize("method", MERGES)
def test_merging_one_module_with_weight_one_gives_its_own_outputs(bank, res, method):
    m = bank.get("people-00")
    own = res.ensure(m)
    merged, cached = res.merged([m], [1.0], MergeConfig(method=method))
    assert not cached
    ref = logits(res.host, own)
    with res.host.disable_adapter():
        base = res.host(input_ids=IDS).logits
    assert not torch.allclose(ref, base, atol=1e-4)  # the module does change outputs
    assert torch.allclose(logits(res.host, merged), ref, atol=1e-5)


def test_cat_is_exactly_the_sum_of_the_updates(bank, res):
    a, b = bank.get("people-00"), bank.get("people-01")
    na, nb = res.ensure(a), res.ensure(b)
    merged, _ = res.merged([a, b], [1.0, 1.0], MergeConfig(method="cat"))
    res.host.set_adapter(na)
    res.host.base_model.set_adapter([na, nb])  # both active at once: base + dW_a + dW_b
    with torch.no_grad():
        both = res.host(input_ids=IDS).logits
    assert torch.allclose(logits(res.host, merged), both, atol=1e-5)
    linear, _ = res.merged([a, b], [1.0, 1.0], MergeConfig(method="linear"))
    assert not torch.allclose(logits(res.host, linear), both, atol=1e-4)  # PEFT linear has cross terms
    # svd keeping every singular value (rank 4 + 4) is the sum too: the reduced SVD loses nothing
    full_svd, _ = res.merged([a, b], [1.0, 1.0], MergeConfig(method="svd", svd_rank=8))
    assert torch.allclose(logits(res.host, full_svd), both, atol=1e-4)
    low_svd, _ = res.merged([a, b], [1.0, 1.0], MergeConfig(method="svd"))  # rank 4: truncated
    assert not torch.allclose(logits(res.host, low_svd), both, atol=1e-5)


@pytest.mark.parametrize("method", MERGES)
def test_every_merge_method_yields_an_adapter_plain_peft_loads(bank, res, method, tmp_path):
    from peft import PeftModel

    from loramem.adapters import save_adapter
    from loramem.models import _tiny_random

    mods = [bank.get(n) for n in ("people-00", "people-01", "people-02")]
    cfg = MergeConfig(method=method, density=0.7)
    name, _ = res.merged(mods, merge_weights(cfg, 3), cfg)
    ours = logits(res.host, name)
    save_adapter(res.host, name, tmp_path / method, {"base": {"source": "tiny-random"}})
    plain = PeftModel.from_pretrained(_tiny_random(0, torch.device("cpu")).model, str(tmp_path / method)).eval()
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=IDS).logits, ours, atol=1e-5)


def test_merges_are_cached_and_dare_is_seeded(bank, res):
    mods = [bank.get("people-00"), bank.get("people-01")]
    cfg = MergeConfig(method="dare_linear", density=0.5, seed=3)
    first, cached = res.merged(mods, [0.5, 0.5], cfg)
    again, cached2 = res.merged(mods, [0.5, 0.5], cfg)
    assert first == again and not cached and cached2 and res.merges == 1
    out1 = logits(res.host, first)
    res.clear()
    redo, cached3 = res.merged(mods, [0.5, 0.5], cfg)
    assert not cached3 and torch.allclose(logits(res.host, redo), out1, atol=1e-6)
    other, _ = res.merged(mods, [0.5, 0.5], cfg.model_copy(update={"seed": 4}))
    assert not torch.allclose(logits(res.host, other), out1, atol=1e-6)


def test_merge_weights():
    assert merge_weights(MergeConfig(method="ties"), 3) == [1.0, 1.0, 1.0]
    assert merge_weights(MergeConfig(method="linear"), 4) == [1 / 16] * 4  # PEFT's sqrt split: see the copies test
    assert merge_weights(MergeConfig(method="exact-linear"), 4) == [0.25] * 4
    w = merge_weights(MergeConfig(method="linear", weights="score"), 2, [2.0, 0.0])
    assert w[0] > w[1] and abs(sum(w) - 1) < 1e-9
    assert merge_weights(MergeConfig(method="cat", weights=[0.3, 0.7]), 2) == [0.3, 0.7]
    with pytest.raises(UserError, match="one weight per module"):
        merge_weights(MergeConfig(method="cat", weights=[1.0]), 2)


def test_mixed_ranks_need_cat_or_svd(bank, res, tiny_base, tmp_path):
    from loramem.bank.store import MemoryBank
    from loramem.bank.write import write_to_bank
    from loramem.config import WriterConfig

    b = MemoryBank(tmp_path / "b")
    write_to_bank(phonebook_file(tmp_path, 4), b, "r2", tiny_base, WriterConfig(rank=2, steps=1, progress=False))
    write_to_bank(phonebook_file(tmp_path, 4), b, "r4", tiny_base, WriterConfig(rank=4, steps=1, progress=False))
    r = Resident(b, tiny_base)
    mods = b.list()
    with pytest.raises(UserError, match="one rank"):
        r.merged(mods, [0.5, 0.5], MergeConfig(method="ties"))
    for method in ("cat", "svd", "exact-linear", "exact-ties", "exact-dare"):
        assert r.merged(mods, [0.5, 0.5], MergeConfig(method=method))[0]
    r.clear()
    with pytest.raises(ValueError):
        merge_into(res.host, ["x"], [1.0], "y", MergeConfig(method="none"))


def test_fast_switch_gives_the_same_outputs_as_peft_set_adapter(bank, res):
    names = [res.ensure(bank.get(n)) for n in ("people-00", "people-01", "people-02")]
    for n in names + names[::-1]:
        res.activate(n)
        assert res.host.active_adapter == n
        with torch.no_grad():
            fast = res.host(input_ids=IDS).logits
        assert torch.allclose(fast, logits(res.host, n), atol=0)  # logits() uses PEFT's own set_adapter
    res.activate(names[0])
    assert not torch.allclose(res.host(input_ids=IDS).logits, logits(res.host, names[1]), atol=1e-5)


@pytest.mark.parametrize("method", PEFT_MERGES)
def test_peft_entries_give_the_adapter_peft_add_weighted_adapter_builds(bank, res, method):
    mods = [bank.get(n) for n in ("people-00", "people-01", "people-02")]
    # DARE drops at random and PEFT draws its new adapter's init from the same stream first: at density 1 the
    # drop keeps everything, so both must agree exactly; the seeded drop itself is tested below
    density = 1.0 if method.startswith("dare") else 0.6
    cfg = MergeConfig(method=method, density=density, seed=5)
    ours, _ = res.merged(mods, [0.5, 0.3, 0.2], cfg)
    names = [res.ensure(m) for m in mods]
    kw = {"density": density} if method in ("ties", "dare_linear", "dare_ties", "magnitude_prune") else {}
    if method in ("ties", "dare_ties"):
        kw["majority_sign_method"] = "total"
    if method == "svd":
        kw["svd_full_matrices"] = False
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        res.host.add_weighted_adapter(names, [0.5, 0.3, 0.2], "peft_ref", combination_type=method, **kw)
    conf = res.host.peft_config["peft_ref"]
    for module in res.host.modules():  # PEFT keeps alpha = r but rsLoRA would rescale: compare the raw updates
        if isinstance(getattr(module, "scaling", None), dict) and "peft_ref" in module.scaling:
            module.scaling["peft_ref"] = 1.0
    assert conf.r == res.host.peft_config[ours].r
    try:
        assert torch.allclose(logits(res.host, ours), logits(res.host, "peft_ref"), atol=1e-5)
    finally:
        res.host.delete_adapter("peft_ref")


def _factors(r: int, seed: int, out: int = 12, inp: int = 10, scale: float = 2.0) -> Factors:
    g = torch.Generator().manual_seed(seed)
    return Factors(torch.randn(r, inp, generator=g), torch.randn(out, r, generator=g), scale)


def _merged_delta(method: str, layers, weights, **cfg) -> torch.Tensor:
    return merge_layers([{"l": f} for f in layers], weights, MergeConfig(method=method, **cfg))["l"].delta()


@pytest.mark.parametrize("method", ["exact-linear", "exact-ties", "exact-dare", "cat", "svd"])
def test_one_module_merged_with_weight_one_is_the_module(method):
    f = _factors(3, 0)
    kw = {"density": 1.0} if method in ("exact-ties", "exact-dare") else {}
    assert torch.allclose(_merged_delta(method, [f], [1.0], **kw), f.delta(), atol=1e-9 * f.delta().abs().max() + 1e-6)


def test_exact_linear_is_the_weighted_sum_of_the_updates_up_to_the_svd_truncation():
    fs = [_factors(2, 1), _factors(3, 2), _factors(2, 3)]
    w = [0.5, -0.25, 1.5]
    want = sum(wi * f.delta() for wi, f in zip(w, fs, strict=True))
    assert torch.allclose(_merged_delta("exact-linear", fs, w), want, atol=1e-9)  # default rank 7: nothing lost
    low = _merged_delta("exact-linear", fs, w, svd_rank=4)
    s = torch.linalg.svdvals(want)
    # the truncation is the best rank-4 approximation: its error is exactly the dropped singular values
    assert abs(torch.linalg.matrix_norm(want - low) - s[4:].norm()) < 1e-8
    peft_linear = _merged_delta("linear", [_factors(2, 1), _factors(2, 4)], [0.5, 0.5])
    exact = _merged_delta("exact-linear", [_factors(2, 1), _factors(2, 4)], [0.5, 0.5])
    assert not torch.allclose(peft_linear, exact, atol=1e-3)  # PEFT's linear is not the sum of the updates


@pytest.mark.parametrize("method", MERGES)
@pytest.mark.parametrize("n", [2, 5])
def test_n_copies_of_one_module_merged_with_the_default_weights_are_the_module(method, n):
    """The merge scaling check: a merge of N identical modules must not scale the update (a cliff from N=1 to
    N=2 in Q11 was PEFT's linear at weights 1/N, which gives N times the update)."""
    f = _factors(3, 7)
    kw = {"density": 1.0}  # nothing trimmed or dropped: only the scaling is under test
    got = _merged_delta(method, [f] * n, merge_weights(MergeConfig(method=method, **kw), n), **kw)
    assert torch.allclose(got, f.delta(), atol=1e-5 * f.delta().abs().max()), (method, n)


@pytest.mark.parametrize("method", ["linear", "ties", "exact-linear"])
def test_n_copies_of_a_trained_module_answer_as_the_module(bank, res, method):
    m = bank.get("people-01")
    ref = logits(res.host, res.ensure(m))
    cfg = MergeConfig(method=method, density=1.0)
    merged, _ = res.merged([m] * 3, merge_weights(cfg, 3), cfg)
    assert torch.allclose(logits(res.host, merged), ref, atol=1e-4)


def test_exact_ties_keeps_only_agreeing_signs():
    a = Factors(torch.eye(2), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    b = Factors(torch.eye(2), torch.tensor([[-3.0, 0.0], [0.0, 1.0]]))
    got = _merged_delta("exact-ties", [a, b], [1.0, 1.0], density=1.0)
    # entry (0,0): +1 and -3 disagree, the elected sign (total) is -, so only -3 survives; (1,1): both +1 -> mean 1
    assert torch.allclose(got, torch.tensor([[-3.0, 0.0], [0.0, 1.0]], dtype=got.dtype), atol=1e-9)


def test_a_merge_of_ones_own_is_one_registered_function(bank, res):
    @REGISTRY.register("first-only", help="the first module's update alone (test)")
    def first_only(layers, weights, cfg):
        return Factors(layers[0].A * layers[0].scale, layers[0].B)

    try:
        a, b = bank.get("people-00"), bank.get("people-01")
        own = res.ensure(a)
        name, _ = res.merged([a, b], [0.5, 0.5], MergeConfig(method="first-only"))
        assert torch.allclose(logits(res.host, name), logits(res.host, own), atol=1e-5)
        assert "first-only" in REGISTRY.help_text()
    finally:
        REGISTRY._entries.pop("first-only")
