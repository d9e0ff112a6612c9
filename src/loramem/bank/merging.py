"""Merge methods: several modules -> one adapter. Thin over PEFT's `add_weighted_adapter`.

PEFT semantics are kept for faithful reproduction of the paper: `linear`, `ties`, `dare_linear`, `dare_ties`
and `magnitude_prune` combine each module's A and B matrices separately (so the product has cross terms and all
inputs must share one rank); `cat` stacks them (exact: the merged update is the weighted sum of the modules'
updates, rank = sum of ranks); `svd` sums the full updates B·A and truncates by SVD to the largest input rank.
`none` means no merge: the top-1 module answers (or each question its own module in a mixed-adapter batch).

Weights ("auto", the default): 1 per module for the sign-consensus methods (ties, dare_ties), which already
average over the modules that agree, as in the TIES paper with lambda = 1; 1/k for the additive methods, so they
average rather than add up. "mean", "sum" and "score" (routing scores, softmax-normalized) override that.
"""

from __future__ import annotations

import math

import torch

from loramem.config import MergeConfig
from loramem.errors import UserError

METHODS = ("none", "linear", "cat", "ties", "dare_linear", "dare_ties", "svd", "magnitude_prune")
_CONSENSUS = ("ties", "dare_ties")
_DENSITY = ("ties", "dare_linear", "dare_ties", "magnitude_prune")
_SAME_RANK = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")


def check_method(method: str) -> str:
    if method not in METHODS:
        raise UserError(f"unknown merge method '{method}'; choose one of {', '.join(METHODS)}")
    return method


def merge_weights(cfg: MergeConfig, k: int, scores: list[float] | None = None) -> list[float]:
    """The weight of each of k modules under a merge config (pure; see the module docstring)."""
    w = cfg.weights
    if isinstance(w, list):
        if len(w) != k:
            raise UserError(f"{len(w)} merge weights given for {k} modules; give one weight per module")
        return [float(x) for x in w]
    if w == "auto":
        w = "sum" if cfg.method in _CONSENSUS else "mean"
    if w == "sum":
        return [1.0] * k
    if w == "mean":
        return [1.0 / k] * k
    if w == "score":
        s = torch.tensor(scores if scores is not None else [0.0] * k, dtype=torch.float64)
        return torch.softmax(s / max(cfg.temperature, 1e-6), 0).tolist()
    raise UserError(f"unknown merge weights '{w}'; use auto, mean, sum, score or a list")


def merge_adapters(host, adapters: list[str], weights: list[float], name: str, cfg: MergeConfig) -> str:
    """Add adapter `name` = merge of `adapters` on the PEFT model `host` (replacing one of that name)."""
    method = check_method(cfg.method)
    if method == "none":
        raise ValueError("merge method 'none' builds no adapter")
    if not adapters:
        raise UserError("nothing to merge: no modules were chosen")
    ranks = {host.peft_config[a].r for a in adapters}
    if method in _SAME_RANK and len(ranks) > 1:
        raise UserError(f"merge '{method}' needs modules of one rank (got ranks {sorted(ranks)}); "
                        "use --merge cat or --merge svd")
    if name in host.peft_config:  # add_weighted_adapter silently keeps an existing adapter of the same name
        host.delete_adapter(name)
    kwargs: dict = {"combination_type": method}
    if method in _DENSITY:
        kwargs["density"] = cfg.density
    if method in _CONSENSUS:
        kwargs["majority_sign_method"] = cfg.majority_sign
    if method == "svd":
        # the reduced SVD has the same leading singular vectors; the full one also builds square U and V^T
        # (d x d each), which made an svd merge several times slower than any other method
        kwargs["svd_full_matrices"] = False
        if cfg.svd_rank:
            kwargs["svd_rank"] = cfg.svd_rank
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # DARE drops at random: the same merge must give the same adapter
        host.add_weighted_adapter(adapters, weights, name, **kwargs)
    _fix_rslora_scaling(host, name)
    return name


def _fix_rslora_scaling(host, name: str) -> None:
    """The merged adapter stores the already-scaled update with alpha = r; under rsLoRA PEFT would then scale it
    by alpha/sqrt(r) = sqrt(r) instead of 1. Set alpha so the scaling is exactly 1."""
    conf = host.peft_config[name]
    if not getattr(conf, "use_rslora", False):
        return
    conf.lora_alpha = math.sqrt(conf.r)
    for module in host.modules():
        scaling = getattr(module, "scaling", None)
        if isinstance(scaling, dict) and name in scaling:
            scaling[name] = 1.0
