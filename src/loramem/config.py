"""Typed settings shared by the CLI, the library and the server. Defaults live here, once.

This is the only module (besides cli.py) that reads the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

DEFAULT_MODEL = "smollm2-135m"


def loramem_home() -> Path:
    """Cache root: $LORAMEM_HOME, else ~/.cache/loramem."""
    return Path(os.environ.get("LORAMEM_HOME", Path.home() / ".cache" / "loramem")).expanduser()


def env(name: str, default: str | None = None) -> str | None:
    """Read one environment variable (API keys, endpoints); the only place library code may."""
    return os.environ.get(name, default)


def paper_release_dir() -> Path | None:
    """Where the paper's released data lies: $LORAMEM_PAPER_DATA, else ../shared/data/paper-release if present."""
    given = os.environ.get("LORAMEM_PAPER_DATA")
    if given:
        return Path(given)
    for base in (Path.cwd(), *Path.cwd().parents):
        cand = base.parent / "shared" / "data" / "paper-release"
        if cand.is_dir():
            return cand
        cand = base / "shared" / "data" / "paper-release"
        if cand.is_dir():
            return cand
    return None


Format = Literal["plain", "chat", "chat-user"]
"""How a (prompt, answer) example becomes text.
plain: "Question: ...? Answer: ..." as in the paper's CSV rows.
chat: question in the user turn, answer in the assistant turn of the model's chat template.
chat-user: the whole row in the user turn (the paper's released recipe)."""


class WriterConfig(BaseModel):
    """Options of one LoRA module's training run (`loramem write`)."""

    rank: int = Field(8, description="LoRA rank r")
    alpha: float | None = Field(None, description="LoRA alpha; default 2*rank")
    rslora: bool = False
    targets: str = Field("all-linear", description="'all-linear' or comma list of module names, e.g. q_proj,v_proj")
    layers: str | None = Field(None, description="layer range, e.g. '20-29' or '0,5,10'; default all layers")
    dropout: float = 0.0
    lr: float = 2e-3
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = 0
    steps: int | None = Field(None, description="max optimizer steps; default from epochs")
    epochs: float = 100.0
    batch_size: int = 16
    seed: int = 0
    loss: Literal["answer", "sequence"] = "answer"
    format: Format = "plain"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    fast: bool = Field(True, description="logits at supervised positions only, length-grouped batches")
    prefix_cache: bool = Field(True, description="cache frozen layers below the lowest LoRA layer (fast path)")
    target_em: float | None = Field(1.0, description="stop when training-fact exact match reaches this; None: never")
    eval_every: int | None = Field(None, description="steps between exact-match checks; default once per epoch")
    max_seconds: float | None = None
    progress: bool = True

    @field_validator("rank")
    @classmethod
    def _rank_positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"rank must be >= 1 (got {v}); pass e.g. --rank 8")
        return v

    @field_validator("lr")
    @classmethod
    def _lr_positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(f"lr must be > 0 (got {v})")
        return v

    @field_validator("batch_size")
    @classmethod
    def _batch_positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"batch size must be >= 1 (got {v})")
        return v

    @model_validator(mode="after")
    def _default_alpha(self) -> WriterConfig:
        if self.alpha is None:
            self.alpha = float(2 * self.rank)
        return self

    @classmethod
    def recipe(cls, name: str, **overrides) -> WriterConfig:
        """A named preset; `paper` reproduces the authors' released settings."""
        presets = {
            "fast": {},
            # The paper's release: alpha = rank, dropout 0.1, lr 5e-5 cosine, batch 8, 1500 steps,
            # loss on the whole sequence, the row in the user turn of the chat template, no early stop.
            "paper": dict(
                dropout=0.1, lr=5e-5, schedule="cosine", batch_size=8, steps=1500,
                loss="sequence", format="chat-user", target_em=None,
            ),
        }
        if name not in presets:
            from loramem.errors import UserError

            raise UserError(f"unknown recipe '{name}'; choose one of: {', '.join(presets)}")
        values = {**presets[name], **overrides}
        if name == "paper" and values.get("alpha") is None:
            values["alpha"] = float(values.get("rank", cls.model_fields["rank"].default))
        return cls(**values)


# ---- documents, views, generators, judges (issue 4) ----

GeneratorKind = Literal["template", "local", "openai"]
JudgeKind = Literal["embed", "openai", "local"]


def _openai_env(name: str, default: str | None = None) -> str | None:
    """LORAMEM_OPENAI_<NAME>, else the openai client's own OPENAI_<NAME>."""
    return env(f"LORAMEM_OPENAI_{name}") or env(f"OPENAI_{name}") or default


class EndpointConfig(BaseModel):
    """An OpenAI-compatible chat-completions endpoint (hosted API, vLLM, loramem serve, ...)."""

    base_url: str | None = Field(None, description="e.g. http://127.0.0.1:8000/v1; env LORAMEM_OPENAI_BASE_URL")
    model: str | None = Field(None, description="model name the server knows; env LORAMEM_OPENAI_MODEL")
    api_key: str | None = Field(None, description="env LORAMEM_OPENAI_API_KEY or OPENAI_API_KEY")
    max_retries: int = Field(4, description="retries after a failed request (5xx, 429, connection errors)")
    backoff_s: float = Field(1.0, description="first retry waits this long; doubles each retry")
    concurrency: int = Field(4, description="requests in flight at once")
    timeout_s: float = 120.0
    json_mode: bool = Field(True, description="ask for response_format=json_object where a JSON answer is wanted")

    @classmethod
    def from_env(cls, **given) -> EndpointConfig:
        """Fill what is not given from the environment."""
        values = {"base_url": _openai_env("BASE_URL"), "model": _openai_env("MODEL"),
                  "api_key": _openai_env("API_KEY")}
        values.update({k: v for k, v in given.items() if v is not None})
        return cls(**values)


class GeneratorConfig(BaseModel):
    """Which generator writes synthetic views, and how."""

    kind: GeneratorKind = "template"
    model: str = Field(DEFAULT_MODEL, description="local HF model (kind=local)")
    endpoint: EndpointConfig = Field(default_factory=EndpointConfig)
    temperature: float = 0.0
    max_new_tokens: int = 384
    batch_size: int = Field(8, description="prompts per local generate() call")
    chunk_tokens: int = Field(320, description="documents are cut into sections of about this many tokens")
    seed: int = 0


class ViewsConfig(BaseModel):
    """How documents become training rows."""

    qa: int = Field(40, description="QA pairs when a view says just 'qa'")
    summary: int = Field(8, description="summaries when a view says just 'summary'")
    rewrite: int = Field(4, description="rewrites when a view says just 'rewrite'")
    raw_chunk_tokens: int = Field(256, description="raw text is cut into rows of at most this many tokens")
    budget_tokens: int | None = Field(None, description="fix every view's training tokens (equal-token comparisons)")
    cache_dir: Path | None = Field(None, description="view cache; default $LORAMEM_HOME/views")
    refresh: bool = Field(False, description="regenerate even when cached")

    def cache_root(self) -> Path:
        return self.cache_dir or loramem_home() / "views"


class JudgeConfig(BaseModel):
    """Who scores free-text answers on the paper's 0-10 rubric."""

    kind: JudgeKind = "embed"
    model: str = Field(DEFAULT_MODEL, description="local judge model (kind=local)")
    endpoint: EndpointConfig = Field(default_factory=EndpointConfig)
    batch_size: int = 8
