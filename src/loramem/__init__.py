"""loramem: LoRA adapters as knowledge memory.

Write facts into a LoRA module, keep modules in a bank, ask questions that are routed to them:

    import loramem

    loramem.write("people.csv", bank="my-bank", name="people", model="smollm2-135m", rank=8)
    bank = loramem.Bank("my-bank")
    print(bank.ls())
    print(loramem.ask("What is the phone number of Ann Lee?", bank="my-bank")["answer"])
    bank.export("exported")     # portable PEFT folders with model cards, for PEFT / vLLM

Every argument takes a path or a name as readily as an object: `bank` is a folder or a `Bank`, `model` a
registry name ("smollm2-135m", "tiny-random"), a Hugging Face id, a local folder, or a loaded `Base`.

    write(data, bank=..., name=..., model=..., **writer options)   train one module (or `partition=N` modules)
    Bank(path)                .ls() .write() .ask() .update() .retire() .consolidate() .rollback() .verify()
                              .export()
    ask(question, bank=...)   route -> merge -> generate; mode= lora, base, icl, rag, lora+rag, lora+icl
    datasheet(out, model=...) the paper's audit as a report (HTML + Markdown + findings.json)
    UserError                 what every mistake a user can make raises, with the fix in its message

The same calls are the `loramem` command's verbs (`loramem --help`). Importing loramem is cheap: torch and
transformers load on the first call that needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from loramem.errors import UserError

__version__ = "0.1.0"
__all__ = ["Bank", "UserError", "__version__", "ask", "datasheet", "write"]

if TYPE_CHECKING:
    from loramem.api import Bank, ask, datasheet, write

_LAZY = {"write", "Bank", "ask", "datasheet"}


def __getattr__(name: str):
    # the API module imports torch on use only, but keep even its import out of `import loramem`
    if name in _LAZY:
        from loramem import api

        return getattr(api, name)
    raise AttributeError(f"module 'loramem' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
