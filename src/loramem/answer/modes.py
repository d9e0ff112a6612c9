"""Answer modes: where the knowledge for an answer comes from. One registry, one row each.

    base      closed-book, memory modules off (the base model alone)
    lora      closed-book with the memory module(s) active
    rag       top-k chunks of a RAG index in the prompt, modules off
    icl       whole documents in the prompt (within the context budget), modules off
    lora+rag  rag with the modules active
    lora+icl  icl with the modules active

A new mode is one `MODES.register(...)` of a `Mode`; `loramem ask --mode`, the server and the recipes accept it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from loramem.registry import MODES


@dataclass(frozen=True)
class Mode:
    name: str
    memory: bool  # the routed/active memory modules answer (else they are switched off)
    context: Literal["rag", "icl"] | None  # retrieved chunks, whole documents, or closed-book


for _m, _help in [
    (Mode("base", False, None), "closed-book, memory off (the base model alone)"),
    (Mode("icl", False, "icl"), "whole documents in the prompt, memory off"),
    (Mode("rag", False, "rag"), "retrieved chunks in the prompt, memory off"),
    (Mode("lora", True, None), "closed-book from the memory modules"),
    (Mode("lora+rag", True, "rag"), "memory modules and retrieved chunks"),
    (Mode("lora+icl", True, "icl"), "memory modules and whole documents"),
]:
    MODES.register(_m.name, help=_help)(_m)


def mode(name: str) -> Mode:
    """The registered mode of that name (a UserError naming the choices otherwise)."""
    return MODES.get(name)
