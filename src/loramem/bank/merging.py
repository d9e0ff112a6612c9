"""Merge methods: several LoRA modules -> one. Each method is a pure function over one layer's LoRA factors.

    @MERGES.register("mine", help="...")
    def mine(layers: list[Factors], weights: list[float], cfg: MergeConfig) -> Factors: ...

A layer of module i is `Factors(A_i [r_i x in], B_i [out x r_i], s_i)`: its weight update is s_i * B_i @ A_i.
`merge_into(host, adapters, weights, name, cfg)` reads the factors of resident adapters, runs the method on every
LoRA layer and installs the result as adapter `name`, so routing, serving and export treat it as any module.

PEFT's `add_weighted_adapter` methods are entries with PEFT's own math (tests check they give PEFT's adapter):
`linear`, `ties`, `dare_linear`, `dare_ties`, `magnitude_prune` combine the A's and the B's separately (with
sqrt(w * s) on each side), so the product has cross terms: even `linear` is not the weighted sum of the modules'
updates, and all inputs must share one rank. `cat` stacks them (exact: rank = sum of ranks); `svd` sums the
updates and truncates by SVD to the largest input rank.

loramem's exact merges work in weight-update space: `exact-linear` (the weighted sum of the updates), `exact-ties`
(TIES: trim to the top `density` entries, elect the sign, mean of those that agree) and `exact-dare` (DARE: drop at
random, rescale by 1/density), each on the full updates s_i * B_i @ A_i, then a truncated SVD back to a LoRA of rank
`cfg.svd_rank` (default: the sum of the input ranks, which loses nothing for exact-linear).

Weights ("auto", the default) are the ones under which k copies of one module merge back into that module (a
test checks it for every method): 1 per module for the sign-consensus methods (ties, dare_ties, exact-ties), which
already average over the modules that agree, as in the TIES paper with lambda = 1; 1/k for the additive methods in
weight space (exact-linear, exact-dare, cat, svd), so they average rather than add up; 1/k^2 for PEFT's sidewise
additive methods (linear, dare_linear, magnitude_prune), because PEFT puts sqrt(w) on the A's and on the B's, so
the product of k copies at weight w is (k sqrt(w))^2 times the update: at 1/k it would be k times the module. "mean", "sum" and "score" (routing scores, softmax-normalized) override that.
`none` means no merge: the top-1 module answers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loramem.config import MergeConfig
from loramem.errors import UserError
from loramem.registry import MERGES

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Factors:
    """One LoRA layer of one module: update = scale * B @ A."""

    A: torch.Tensor  # [r, in]
    B: torch.Tensor  # [out, r]
    scale: float = 1.0

    def delta(self) -> torch.Tensor:
        return self.scale * (self.B.double() @ self.A.double())


def check_method(method: str) -> str:
    return MERGES.check(method)


@MERGES.register("none", help="no merge: the top-1 module answers")
def _none(layers, weights, cfg):  # pragma: no cover - never called: no adapter is built
    raise ValueError("merge method 'none' builds no adapter")


# ---- PEFT's add_weighted_adapter methods, same math ----


def _peft_sides(layers: list[Factors], weights: list[float]):
    """PEFT's split of w * s over the two factors: sqrt(|w s|) on each, the sign on A."""
    import torch

    wa = [math.copysign(math.sqrt(abs(w * f.scale)), w * f.scale) for f, w in zip(layers, weights, strict=True)]
    wb = [math.sqrt(abs(w * f.scale)) for f, w in zip(layers, weights, strict=True)]
    return torch.tensor(wa), torch.tensor(wb)


def _peft_sidewise(fn_name: str):
    def merge(layers: list[Factors], weights: list[float], cfg: MergeConfig) -> Factors:
        from peft.utils import merge_utils

        fn = getattr(merge_utils, fn_name)
        wa, wb = _peft_sides(layers, weights)
        extra = {}
        if fn_name != "task_arithmetic":
            extra["density"] = cfg.density
        if fn_name in ("ties", "dare_ties"):
            extra["majority_sign_method"] = cfg.majority_sign
        A = fn([f.A for f in layers], wa.to(layers[0].A.device), **extra)
        B = fn([f.B for f in layers], wb.to(layers[0].B.device), **extra)
        return Factors(A.to(layers[0].A.dtype), B.to(layers[0].B.dtype), 1.0)

    return merge


for _name, _fn, _help in [
    ("linear", "task_arithmetic", "PEFT: weighted sum of the A's and of the B's (cross terms; one rank)"),
    ("ties", "ties", "PEFT: TIES on the A's and on the B's separately"),
    ("dare_linear", "dare_linear", "PEFT: DARE on the A's and on the B's separately"),
    ("dare_ties", "dare_ties", "PEFT: DARE + TIES sign election on the A's and on the B's"),
    ("magnitude_prune", "magnitude_prune", "PEFT: magnitude pruning on the A's and on the B's"),
]:
    MERGES.register(_name, help=_help, same_rank=True, peft=True, sidewise=_name in ("linear", "dare_linear",
                                                                                   "magnitude_prune"))(
        _peft_sidewise(_fn))


@MERGES.register("cat", help="PEFT: stack the modules (exact sum of updates; rank = sum of ranks)", peft=True)
def cat(layers: list[Factors], weights: list[float], cfg: MergeConfig) -> Factors:
    import torch

    A = torch.cat([f.A * w * f.scale for f, w in zip(layers, weights, strict=True)], 0)
    B = torch.cat([f.B for f in layers], 1)
    return Factors(A, B, 1.0)


@MERGES.register("svd", help="PEFT: sum of updates, truncated by SVD to the largest input rank", peft=True)
def svd(layers: list[Factors], weights: list[float], cfg: MergeConfig) -> Factors:
    import torch

    delta = sum(w * f.scale * (f.B @ f.A) for f, w in zip(layers, weights, strict=True))
    return _to_lora(delta.to(torch.float32), cfg.svd_rank or max(f.A.shape[0] for f in layers), layers[0])


# ---- loramem's exact merges in weight-update space ----


def _exact(combine):
    def merge(layers: list[Factors], weights: list[float], cfg: MergeConfig) -> Factors:
        import torch

        deltas = [f.delta() for f in layers]
        delta = combine(deltas, torch.tensor(weights, dtype=torch.float64), cfg)
        return _to_lora(delta, cfg.svd_rank or sum(f.A.shape[0] for f in layers), layers[0])

    return merge


def _ties(deltas, w, cfg):
    from peft.utils.merge_utils import ties

    return ties(deltas, w, cfg.density, cfg.majority_sign)


def _dare(deltas, w, cfg):
    from peft.utils.merge_utils import dare_linear

    return dare_linear(deltas, w, cfg.density)


def _exact_linear(layers: list[Factors], weights: list[float], cfg: MergeConfig) -> Factors:
    """The weighted sum of the updates, sum_i w_i s_i B_i A_i = B_cat C A_cat, has rank at most R = sum of ranks,
    so its truncated SVD comes from two thin QRs and an R x R SVD: the same factors as the SVD of the dense sum,
    at O((in + out) R^2) instead of O(in out min(in, out)) per layer (a cpu-scale Q10 cell merges 48 sets)."""
    import torch

    B = torch.cat([f.B.double() for f in layers], 1)  # [out, R]
    A = torch.cat([(w * f.scale) * f.A.double() for f, w in zip(layers, weights, strict=True)], 0)  # [R, in]
    qb, rb = torch.linalg.qr(B)
    qa, ra = torch.linalg.qr(A.T)
    U, S, Vh = torch.linalg.svd(rb @ ra.T)
    rank = min(cfg.svd_rank or A.shape[0], S.shape[0])
    like = layers[0]
    return Factors((Vh[:rank] @ qa.T).to(like.A.dtype).contiguous(),
                   ((qb @ U[:, :rank]) * S[:rank]).to(like.B.dtype).contiguous())


MERGES.register("exact-linear", help="weighted sum of the updates B·A, SVD back to a LoRA (exact at the default "
                "rank)", exact=True)(_exact_linear)
MERGES.register("exact-ties", help="TIES on the full updates B·A, SVD back to a LoRA", exact=True,
                consensus=True)(_exact(_ties))
MERGES.register("exact-dare", help="DARE on the full updates B·A, SVD back to a LoRA", exact=True)(_exact(_dare))


def _to_lora(delta: torch.Tensor, rank: int, like: Factors) -> Factors:
    """The best rank-`rank` LoRA of an update (truncated SVD): B = U S, A = V^T."""
    import torch

    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    rank = min(rank, S.shape[0])
    return Factors(Vh[:rank].to(like.A.dtype).contiguous(), (U[:, :rank] * S[:rank]).to(like.B.dtype).contiguous())


def merge_weights(cfg: MergeConfig, k: int, scores: list[float] | None = None) -> list[float]:
    """The weight of each of k modules under a merge config (pure; see the module docstring)."""
    import torch

    w = cfg.weights
    if isinstance(w, list):
        if len(w) != k:
            raise UserError(f"{len(w)} merge weights given for {k} modules; give one weight per module")
        return [float(x) for x in w]
    if w == "auto":
        meta = MERGES.entry(cfg.method).meta
        if meta.get("sidewise"):  # PEFT puts sqrt(w) on A and on B: k copies of a module at 1/k^2 are the module
            return [1.0 / k**2] * k
        consensus = cfg.method in ("ties", "dare_ties") or meta.get("consensus")
        w = "sum" if consensus else "mean"
    if w == "sum":
        return [1.0] * k
    if w == "mean":
        return [1.0 / k] * k
    if w == "score":
        s = torch.tensor(scores if scores is not None else [0.0] * k, dtype=torch.float64)
        return torch.softmax(s / max(cfg.temperature, 1e-6), 0).tolist()
    raise UserError(f"unknown merge weights '{w}'; use auto, mean, sum, score or a list")


# ---- reading factors from, and installing a merge on, a PEFT model ----


def lora_layers(host, adapter: str) -> dict[str, Factors]:
    """Every LoRA layer of a resident adapter, by module name."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, mod in host.named_modules():
        if isinstance(mod, LoraLayer) and adapter in mod.lora_A:
            out[name] = Factors(mod.lora_A[adapter].weight.data, mod.lora_B[adapter].weight.data,
                                float(mod.scaling[adapter]))
    return out


def merge_layers(inputs: list[dict[str, Factors]], weights: list[float], cfg: MergeConfig) -> dict[str, Factors]:
    """Run a merge method on every layer any input has (an input without that layer takes no part in it)."""
    import torch

    entry = MERGES.entry(cfg.method)
    if cfg.method == "none":
        raise ValueError("merge method 'none' builds no adapter")
    if entry.meta.get("same_rank"):
        ranks = {f.A.shape[0] for layers in inputs for f in layers.values()}
        if len(ranks) > 1:
            raise UserError(f"merge '{cfg.method}' needs modules of one rank (got ranks {sorted(ranks)}); "
                            "use --merge cat, svd or exact-linear")
    if len(inputs) == 1 and (entry.meta.get("peft") or entry.meta.get("exact")):
        # one module has nothing to resolve: it merges to itself (PEFT switches to linear the same way)
        entry = MERGES.entry("linear" if entry.meta.get("peft") else "exact-linear")
    names = list(dict.fromkeys(n for layers in inputs for n in layers))
    out = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # DARE drops at random: the same merge must give the same adapter
        for n in names:
            have = [(layers[n], w) for layers, w in zip(inputs, weights, strict=True) if n in layers]
            out[n] = entry.obj([f for f, _ in have], [w for _, w in have], cfg)
    return out


def merge_into(host, adapters: list[str], weights: list[float], name: str, cfg: MergeConfig) -> str:
    """Add adapter `name` = the merge of resident `adapters` under `cfg` (replacing one of that name)."""
    if not adapters:
        raise UserError("nothing to merge: no modules were chosen")
    merged = merge_layers([lora_layers(host, a) for a in adapters], weights, cfg)
    install(host, name, merged, adapters)
    return name


def install(host, name: str, layers: dict[str, Factors], like: list[str]) -> None:
    """Install LoRA factors as adapter `name` on `host` (scaling 1; config from the `like` adapters)."""
    import dataclasses

    from peft.tuners.lora import LoraLayer

    if name in host.peft_config:
        host.delete_adapter(name)
    rank = max(f.A.shape[0] for f in layers.values())
    first = host.peft_config[like[0]]
    targets = set().union(*({n.rsplit(".", 1)[-1] for n in lora_layers(host, a)} for a in like))
    layer_sets = [host.peft_config[a].layers_to_transform for a in like]
    to_transform = None if any(x is None for x in layer_sets) else sorted(set().union(*map(set, layer_sets)))
    cfg = dataclasses.replace(first, r=rank, lora_alpha=rank, use_rslora=False, target_modules=targets,
                              layers_to_transform=to_transform, rank_pattern={}, alpha_pattern={},
                              lora_dropout=0.0, inference_mode=True)
    host.add_adapter(name, cfg)
    modules = dict(host.named_modules())
    for layer_name, mod in modules.items():
        if isinstance(mod, LoraLayer) and name in mod.lora_A:
            f = layers.get(layer_name)
            A, B = mod.lora_A[name].weight, mod.lora_B[name].weight
            A.data.zero_()
            B.data.zero_()
            if f is not None:  # a merged rank below `rank` fills the first rows/columns, the rest stays zero
                A.data[: f.A.shape[0]] = f.A.to(A.dtype)
                B.data[:, : f.B.shape[1]] = f.B.to(B.dtype)
            mod.scaling[name] = 1.0
            A.requires_grad_(False)
            B.requires_grad_(False)
