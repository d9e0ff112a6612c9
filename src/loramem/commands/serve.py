"""`loramem serve`: an OpenAI-compatible HTTP API over a bank."""

from __future__ import annotations

from pathlib import Path

import typer

from loramem.commands import app, console
from loramem.errors import UserError


@app.command("serve")
def serve_cmd(
    bank: Path = typer.Option(..., help="bank folder"),
    host: str = typer.Option("127.0.0.1", help="address to bind (127.0.0.1 unless you mean otherwise)"),
    port: int = typer.Option(8000),
    api_key: str | None = typer.Option(None, help="require this Bearer key (default: $LORAMEM_API_KEY)"),
    model: str | None = typer.Option(None, help="base model (default: the bank's)"),
    route: str = typer.Option("embed", help="default router: embed, hybrid, bm25, lora, oracle, embed-module or "
                              "bm25-module"),
    max_batch: int = typer.Option(16, help="requests decoded together in one mixed-adapter batch"),
    max_tokens: int = typer.Option(256, help="largest max_tokens a request may ask for"),
    max_concurrent: int = typer.Option(64, help="requests in flight before 429"),
    max_prompt_tokens: int | None = typer.Option(None, help="prompt tokens a request may send (400 over it); "
                                                 "default: the model's context minus its max_tokens"),
    request_timeout: float = typer.Option(300.0, help="per-request deadline in seconds (429 while queued past "
                                                      "it; finish_reason length while decoding)"),
) -> None:
    """Serve a bank until stopped: /v1/chat/completions and /v1/completions (streaming too), /v1/embeddings,
    /v1/models, /health, /docs."""
    import uvicorn

    from loramem.bank.store import MANIFEST
    from loramem.config import ServeConfig, ask_config, build
    from loramem.serve import create_app

    if not (bank / MANIFEST).is_file():
        raise UserError(f"{bank} is not a bank (no {MANIFEST}); create one with `loramem write FILE --bank {bank} "
                        "--name NAME`")
    cfg = build(ServeConfig, host=host, port=port, api_key=api_key, max_batch=max_batch, max_tokens=max_tokens,
                max_concurrent=max_concurrent, max_prompt_tokens=max_prompt_tokens,
                request_timeout_s=request_timeout, ask=ask_config(route=route))
    application = create_app(bank, model, cfg)
    console.print(f"serving {bank} on http://{host}:{port}/v1 (base {application.state.session.base.name}"
                  f"{', API key required' if cfg.api_key else ''}); Ctrl-C stops")
    uvicorn.run(application, host=host, port=port, log_level="warning")
