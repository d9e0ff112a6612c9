"""Recipes: one module per research question, each exposing `RECIPE` (see runner.Recipe).

Recipes call components (writer, bank, routing, ...); components never import recipes.
"""

from __future__ import annotations

import importlib

from loramem.errors import UserError

# recipe name (as `loramem bench NAME` and `datasheet --only` spell it) -> module in this package
MODULES: dict[str, str] = {
    "capacity": "capacity",
}


def get(name: str):
    """The Recipe registered under `name`."""
    if name not in MODULES:
        raise UserError(f"unknown recipe '{name}'; choose from {', '.join(MODULES)}")
    return importlib.import_module(f"loramem.experiments.{MODULES[name]}").RECIPE
