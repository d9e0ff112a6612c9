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
    "formats": "formats", "mixes": "mixes", "model-scale": "model_scale", "generators": "generators",
    "multi-lora": "multi_lora", "routing": "routing", "merging": "merging", "n-modules": "n_modules",
    "rag-icl": "rag_icl", "counterfact": "counterfact",
}


def available() -> list[str]:
    """Registered recipe names whose module exists."""
    return [n for n, m in MODULES.items() if importlib.util.find_spec(f"loramem.experiments.{m}") is not None]


def get(name: str):
    """The Recipe registered under `name`."""
    if name not in available():
        raise UserError(f"unknown recipe '{name}'; choose from {', '.join(available())}")
    return importlib.import_module(f"loramem.experiments.{MODULES[name]}").RECIPE
