"""Several LoRA adapters over one frozen base in one forward pass: each row of a batch reads its own adapter.

    lanes = Lanes(host, ["a", "b"])
    with lanes.on():
        lanes.rows = [16, 16]          # rows 0-15 go through adapter a, rows 16-31 through b
        out = host(input_ids=ids)      # the base matmuls run once over all 32 rows

PEFT's own adapter path is switched off (`disable_adapter`) while the lanes are on, and a forward hook on every
LoRA layer adds each row group's `B(A(dropout(x))) * scaling` to the base output, exactly PEFT's vanilla LoRA update
(same modules, same scaling, same dropout modules, so the same random stream). The adapters stay PEFT adapters:
PEFT initializes them, and saves and loads them as usual. Row groups are contiguous slices of the batch, so each
adapter's update is one pair of small matmuls on its own rows; nothing is gathered per row.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch


def lora_layers(host) -> list:
    from peft.tuners.lora import LoraLayer

    return [m for m in host.modules() if isinstance(m, LoraLayer)]


class Lanes:
    """Row groups of a batch, each through its own adapter of `host` (a PEFT model)."""

    def __init__(self, host, adapters: Sequence[str]) -> None:
        if len(set(adapters)) != len(adapters):
            raise ValueError(f"adapter names repeat: {list(adapters)}")
        self.host = host
        self.adapters = list(adapters)
        self.layers = [m for m in lora_layers(host) if any(a in m.lora_A for a in self.adapters)]
        for m in self.layers:
            for a in self.adapters:
                if a in getattr(m, "lora_variant", {}):
                    raise ValueError(f"adapter {a} is not vanilla LoRA (DoRA or another variant); train it alone")
        self.rows: list[int] = [0] * len(self.adapters)  # rows of each adapter, in batch order; 0: not in the batch

    def params(self, adapter: str) -> list[torch.nn.Parameter]:
        out = []
        for m in self.layers:
            if adapter in m.lora_A:
                out += [m.lora_A[adapter].weight, m.lora_B[adapter].weight]
        return out

    @contextlib.contextmanager
    def on(self) -> Iterator[Lanes]:
        """PEFT's adapter path off, the row-group hooks on; the lanes' parameters trainable."""
        handles = []
        with self.host.disable_adapter():
            for a in self.adapters:
                for p in self.params(a):
                    p.requires_grad_(True)
            try:
                handles = [m.register_forward_hook(self._hook) for m in self.layers]
                yield self
            finally:
                for h in handles:
                    h.remove()

    @contextlib.contextmanager
    def split(self, rows: Sequence[int]) -> Iterator[None]:
        """Run with another row split for a while (a shared prefix pass has one row per adapter)."""
        old = self.rows
        self.rows = list(rows)
        try:
            yield
        finally:
            self.rows = old

    def _hook(self, layer, args, out: torch.Tensor) -> torch.Tensor:
        x = args[0]
        if sum(self.rows) != x.shape[0]:
            raise RuntimeError(f"lanes split {self.rows} does not cover the batch's {x.shape[0]} rows")
        parts: list[torch.Tensor] = []
        start, touched = 0, False
        for adapter, n in zip(self.adapters, self.rows, strict=True):
            if n == 0:
                continue
            xs = x[start : start + n]
            start += n
            if adapter in layer.lora_A:
                a, b = layer.lora_A[adapter], layer.lora_B[adapter]
                d = b(a(layer.lora_dropout[adapter](xs.to(a.weight.dtype)))) * layer.scaling[adapter]
                touched = True
            else:  # this adapter has no LoRA on this layer (another layer range)
                d = out.new_zeros((n, *out.shape[1:]))
            parts.append(d.to(out.dtype))
        if not touched:
            return out
        return out + (parts[0] if len(parts) == 1 else torch.cat(parts, 0))
