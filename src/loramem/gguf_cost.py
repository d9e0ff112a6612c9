"""What the GGUF-dequantized base costs: the embedded SmolLM2-135M-Instruct is the hub model rounded to Q4_1 and
dequantized, so a module trained on it meets slightly different weights when a user reads it with the hub's.

Q4_1 (llama.cpp) stores each block of 32 weights as 4-bit codes q in 0..15 with a scale d = (max - min) / 15 and
the block minimum m: w' = q * d + m, so every original weight lies within d / 2 of its dequantized value.
`q4_1_round` applies that rounding; `q4_1_jitter` goes the other way (from dequantized weights to a plausible
original: uniform noise of half a quantization step per block), which is what we can do without the hub weights.
`cross_read` trains nothing: it reads one module on two bases and reports exact match on both.
"""

from __future__ import annotations

import copy

import torch

BLOCK = 32


def _blocks(w: torch.Tensor) -> tuple[torch.Tensor, int]:
    flat = w.detach().float().reshape(-1)
    pad = (-flat.numel()) % BLOCK
    return torch.nn.functional.pad(flat, (0, pad)).reshape(-1, BLOCK), pad


def _scale(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = blocks.min(1, keepdim=True).values, blocks.max(1, keepdim=True).values
    return (hi - lo) / 15, lo


def q4_1_round(w: torch.Tensor) -> torch.Tensor:
    """The tensor after a Q4_1 round trip (quantize to 4-bit codes per block of 32, dequantize)."""
    blocks, pad = _blocks(w)
    d, m = _scale(blocks)
    q = torch.where(d > 0, torch.round((blocks - m) / torch.where(d > 0, d, 1)).clamp(0, 15), 0)
    out = (q * d + m).reshape(-1)
    return out[: out.numel() - pad].reshape(w.shape).to(w.dtype)


def q4_1_jitter(w: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Dequantized weights moved by up to half their block's Q4_1 step: a stand-in for the unrounded original."""
    blocks, pad = _blocks(w)
    d, _ = _scale(blocks)
    noise = (torch.rand(blocks.shape, generator=gen) - 0.5) * d
    out = (blocks + noise).reshape(-1)
    return out[: out.numel() - pad].reshape(w.shape).to(w.dtype)


def perturbed_model(model: torch.nn.Module, how: str = "round", seed: int = 0) -> torch.nn.Module:
    """A copy of `model` with every 2-D weight (the ones GGUF quantizes) rounded to Q4_1 or jittered by it."""
    if how not in ("round", "jitter"):
        raise ValueError(f"how must be round or jitter, not {how!r}")
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in other.named_parameters():
            if p.dim() == 2:
                p.copy_(q4_1_round(p) if how == "round" else q4_1_jitter(p, gen))
    return other.eval()


def cross_read(module_dir, examples, base, models: dict[str, torch.nn.Module], fmt: str = "plain") -> dict:
    """Teacher-forced exact match of one saved module read by each of `models` (plain base models, not wrapped by
    PEFT; `base` gives the tokenizer and device)."""
    from peft import PeftModel

    from loramem.evaluate import teacher_forced_em

    out: dict = {"n": len(examples)}
    for label, model in models.items():
        host = PeftModel.from_pretrained(copy.deepcopy(model), str(module_dir)).eval()
        hits = teacher_forced_em(host, base, examples, fmt)
        out[label] = sum(hits) / len(hits)
    return out
