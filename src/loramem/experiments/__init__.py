"""Recipes: one module per research question, each exposing `RECIPE` (see runner.Recipe).

Recipes call components (writer, bank, routing, ...); components never import recipes.
"""

from __future__ import annotations

import importlib
import importlib.util

from loramem.errors import UserError

# recipe name (as `loramem bench NAME` and `datasheet --only` spell it) -> module in this package
# A name whose module is not there yet is simply not available (the datasheet skips it).
MODULES: dict[str, str] = {
    "capacity": "capacity",
    "formats": "view_formats", "mixes": "mixes", "model-scale": "model_scale", "generators": "generators",
    "multi-lora": "multi_lora", "routing": "routing", "merging": "merging", "n-modules": "n_modules",
    "rag-icl": "rag_icl", "counterfact": "counterfact", "continual": "continual",
}


# Recipes registered at run time (your own research questions), by name.
CUSTOM: dict = {}


def register(recipe) -> None:
    """Add your own Recipe: `loramem datasheet` and `run_recipe` then treat it like the built-in ones."""
    CUSTOM[recipe.name] = recipe


def available() -> list[str]:
    """Registered recipe names whose module exists, then custom ones."""
    built_in = [n for n, m in MODULES.items() if importlib.util.find_spec(f"loramem.experiments.{m}") is not None]
    return built_in + [n for n in CUSTOM if n not in built_in]


def get(name: str):
    """The Recipe registered under `name`."""
    if name in CUSTOM:
        return CUSTOM[name]
    if name not in available():
        raise UserError(f"unknown recipe '{name}'; choose from {', '.join(available())}")
    return importlib.import_module(f"loramem.experiments.{MODULES[name]}").RECIPE
