"""`--executor ray`: grid cells as Ray tasks (one GPU each where there are GPUs, else one CPU share)."""

from __future__ import annotations

from collections.abc import Iterator

from loramem.errors import UserError


def _run_cell(recipe, cell: dict, opts_json: str) -> dict:
    # The recipe travels by reference (its module is imported in the worker), so user recipes work too.
    from loramem.runs.runner import RecipeOptions, run_one

    return run_one(recipe, cell, RecipeOptions.model_validate_json(opts_json))


def run_cells_ray(recipe, cells: list[dict], opts, address: str | None = None,
                  num_cpus: int | None = None) -> Iterator[dict]:
    """Submit every cell, yield result rows as they finish (the caller appends them to results.jsonl)."""
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'loramem[ray]'") from None
    import torch

    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    gpus = 1 if torch.cuda.is_available() or ray.cluster_resources().get("GPU", 0) > 0 else 0
    task = ray.remote(num_cpus=1, num_gpus=gpus)(_run_cell)
    quiet = opts.model_copy(update={"progress": False}).model_dump_json()
    pending = [task.remote(recipe, cell, quiet) for cell in cells]
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        if started_here:
            ray.shutdown()
