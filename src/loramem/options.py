"""Typed configs built from plain keyword options (the CLI's and the Python API's), with a bad value reported as
one `UserError` that names the option instead of a pydantic traceback."""

from __future__ import annotations

from typing import Any

from loramem.errors import UserError


def _user_error(exc) -> UserError:
    msgs = []
    for e in exc.errors():
        where = ".".join(str(x) for x in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        msgs.append(f"{where}: {msg}" if where and where not in msg else msg)
    return UserError("; ".join(msgs))


def writer_config(recipe: str = "fast", **given: Any):
    """`WriterConfig.recipe(recipe, **given)`, options given as None left to the preset."""
    from pydantic import ValidationError

    from loramem.config import WriterConfig

    known = set(WriterConfig.model_fields)
    unknown = sorted(set(given) - known)
    if unknown:
        raise UserError(f"unknown writer option(s) {', '.join(unknown)}; choose from {', '.join(sorted(known))}")
    try:
        return WriterConfig.recipe(recipe, **{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        raise _user_error(exc) from None


def ask_config(route: str = "embed", top_k: int = 1, merge: str = "none", weights="auto", density: float = 0.5,
               max_new_tokens: int = 32, **rest: Any):
    """An AskConfig with its MergeConfig, checked: unknown routers and merge methods name the choices."""
    from pydantic import ValidationError

    from loramem.bank.merging import check_method
    from loramem.bank.routing import ROUTERS
    from loramem.config import AskConfig, MergeConfig

    if route not in ROUTERS:
        raise UserError(f"unknown router '{route}'; choose one of {', '.join(ROUTERS)}")
    check_method(merge)
    try:
        return AskConfig(route=route, top_k=top_k, max_new_tokens=max_new_tokens,
                         merge=MergeConfig(method=merge, weights=weights, density=density), **rest)
    except ValidationError as exc:
        raise _user_error(exc) from None
