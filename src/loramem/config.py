"""Typed settings shared by the CLI, the library and the server. Defaults live here, once.

This is the only module that reads the environment (`settings()`); the CLI alone reads sys.argv.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from loramem.errors import UserError

DEFAULT_MODEL = "smollm2-135m"
MAX_RANK = 4096  # well past any model's hidden size here; the writer also checks rank against the model

_ENV = {  # setting -> the variables it is read from, first set wins
    "home": ("LORAMEM_HOME",),
    "precision": ("LORAMEM_PRECISION",),
    "query_encoder": ("LORAMEM_QUERY_ENCODER",),
    "onnx": ("LORAMEM_ONNX",),
    "api_key": ("LORAMEM_API_KEY",),
    "paper_data": ("LORAMEM_PAPER_DATA",),
    "fault": ("LORAMEM_FAULT",),
    "openai_base_url": ("LORAMEM_OPENAI_BASE_URL", "OPENAI_BASE_URL"),
    "openai_model": ("LORAMEM_OPENAI_MODEL", "OPENAI_MODEL"),
    "openai_api_key": ("LORAMEM_OPENAI_API_KEY", "OPENAI_API_KEY"),
}


class Settings(BaseModel):
    """What the environment says, read in one place: LORAMEM_* variables (and the openai client's OPENAI_*)."""

    home: Path = Field(Path.home() / ".cache" / "loramem", description="cache root (models, views, banks of recipes)")
    precision: str = Field("auto", description="writer precision: auto, fp32 or bf16")
    query_encoder: str = Field("int8", description="router query encoder: int8, fp32 or torch")
    onnx: bool = Field(True, description="0: never use ONNX Runtime for the query encoder")
    api_key: str | None = Field(None, description="`loramem serve` requires `Authorization: Bearer KEY`")
    paper_data: Path | None = Field(None, description="the paper's release folder")
    fault: str | None = Field(None, description="test hook: the fault point where this process kills itself")
    openai_base_url: str | None = None
    openai_model: str | None = None
    openai_api_key: str | None = None

    @field_validator("home", "paper_data")
    @classmethod
    def _expand(cls, v):
        return None if v is None else Path(v).expanduser()

    @field_validator("precision", "query_encoder")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.strip().lower()


def settings() -> Settings:
    """The settings of the current environment (parsed again only when a variable changed)."""
    snapshot = tuple((var, os.environ.get(var)) for names in _ENV.values() for var in names)
    return _parse(snapshot)


@lru_cache(maxsize=8)
def _parse(snapshot: tuple) -> Settings:
    env = dict(snapshot)
    values: dict[str, Any] = {}
    for field, names in _ENV.items():
        given = next((env[n] for n in names if env.get(n)), None)
        if given is not None:
            values[field] = given.strip() not in ("0", "false", "no") if field == "onnx" else given
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise user_error(exc, "environment") from None


def loramem_home() -> Path:
    """Cache root: $LORAMEM_HOME, else ~/.cache/loramem."""
    return settings().home


def fault_point(name: str) -> None:
    """A named moment where the fault tests kill this process (`LORAMEM_FAULT=name`): a test hook, not a sleep."""
    if settings().fault == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def paper_release_dir() -> Path | None:
    """Where the paper's released data lies: $LORAMEM_PAPER_DATA, else ../shared/data/paper-release if present."""
    given = settings().paper_data
    if given:
        return given
    for base in (Path.cwd(), *Path.cwd().parents):
        cand = base.parent / "shared" / "data" / "paper-release"
        if cand.is_dir():
            return cand
        cand = base / "shared" / "data" / "paper-release"
        if cand.is_dir():
            return cand
    return None


# ---- turning bad values into one line ----


def user_error(exc: ValidationError, where: str = "") -> UserError:
    """A pydantic validation error as one UserError line naming each bad option and why."""
    msgs = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        msgs.append(f"{loc}: {msg}" if loc and loc not in msg else msg)
    return UserError((f"bad {where}: " if where else "") + "; ".join(msgs))


def build(cls: type[BaseModel], **values: Any):
    """`cls(**values)`, a bad value reported as one UserError (the one place this conversion is written)."""
    try:
        return cls(**values)
    except ValidationError as exc:
        raise user_error(exc) from None


def _registered(registry_name: str, v: str) -> str:
    """A name checked against its family's registry (routers, merges, modes, generators, judges)."""
    from loramem import registry

    reg = getattr(registry, registry_name)
    if v not in reg:
        raise ValueError(reg.unknown(v))
    return v


Format = Literal["plain", "chat", "chat-user"]
"""How a (prompt, answer) example becomes text.
plain: "Question: ...? Answer: ..." as in the paper's CSV rows.
chat: question in the user turn, answer in the assistant turn of the model's chat template.
chat-user: the whole row in the user turn (the paper's released recipe)."""


# field -> (check, message): the writer's numbers, checked where the config is built (CLI, API and recipes alike)
_WRITER_LIMITS = {
    "rank": (lambda v: 1 <= v <= MAX_RANK, f"rank must be in 1..{MAX_RANK} (got {{v}}); pass e.g. --rank 8"),
    "lr": (lambda v: math.isfinite(v) and 0 < v <= 10,
           "lr must be a finite number in (0, 10] (got {v}); pass e.g. --lr 2e-3"),
    "alpha": (lambda v: math.isfinite(v) and v > 0,
              "alpha must be a finite number > 0 (got {v}); leave it out for 2 * rank"),
    "dropout": (lambda v: 0 <= v < 1, "dropout must be in [0, 1) (got {v})"),
    "epochs": (lambda v: math.isfinite(v) and 0 < v <= 1e6,
               "epochs must be a finite number in (0, 1e6] (got {v}); or pass --steps N"),
    "steps": (lambda v: 1 <= v <= 10**8, "steps must be in 1..1e8 (got {v}); --steps 0 would save an untrained module"),
    "min_steps": (lambda v: 1 <= v <= 10**8, "min_steps must be in 1..1e8 (got {v})"),
    "target_em": (lambda v: 0 < v <= 1, "target exact match must be in (0, 1] (got {v})"),
    "max_seconds": (lambda v: v > 0, "max seconds must be > 0 (got {v})"),
    "batch_size": (lambda v: 1 <= v <= 65536, "batch size must be in 1..65536 (got {v})"),
    "eval_every": (lambda v: v >= 1, "eval every must be >= 1 step (got {v}); leave it out for the running estimate"),
}


class WriterConfig(BaseModel):
    """Options of one LoRA module's training run (`loramem write`)."""

    rank: int = Field(8, description="LoRA rank r")
    alpha: float | None = Field(None, description="LoRA alpha; default 2*rank")
    rslora: bool = False
    targets: str = Field("all-linear", description="'all-linear' or comma list of module names, e.g. q_proj,v_proj")
    layers: str | None = Field(None, description="layers: '20-29', '0,5,10', or relative to the model's depth: 'top 3', 'top 20%'; default all layers")
    dropout: float = 0.0
    lr: float = 2e-3
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = 0
    steps: int | None = Field(None, description="max optimizer steps; default from epochs")
    epochs: float = 100.0
    min_steps: int | None = Field(None, description="at least this many optimizer steps when the budget comes from "
                                  "epochs, so a small set still gets enough updates (a capacity grid's smallest "
                                  "sizes); the early stop still applies")
    batch_size: int = 16
    seed: int = 0
    loss: Literal["answer", "sequence"] = "answer"
    format: Format = "plain"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    fast: bool = Field(True, description="logits at supervised positions only, length-grouped batches")
    prefix_cache: bool = Field(True, description="cache frozen layers below the lowest LoRA layer (fast path)")
    target_em: float | None = Field(1.0, description="stop when training-fact exact match reaches this; None: never")
    eval_every: int | None = Field(None, description="steps between full exact-match checks; default: when the "
                                   "running estimate from training passes reaches target_em (and every 10 epochs)")
    max_seconds: float | None = None
    progress: bool = True
    compile: bool = Field(False, description="torch.compile the decoder layers for training (inductor, dynamic "
                                             "shapes); off by default: see benchmarks/writer_levers.py")

    @field_validator(*_WRITER_LIMITS)
    @classmethod
    def _within_limits(cls, v, info):
        """Finite and in range, or a message naming the fix (NaN fails every comparison, so it is refused too)."""
        ok, message = _WRITER_LIMITS[info.field_name]
        if v is not None and not ok(v):
            raise ValueError(message.format(v=v))
        return v

    @model_validator(mode="after")
    def _default_alpha(self) -> WriterConfig:
        if self.alpha is None:
            self.alpha = float(2 * self.rank)
        return self

    @classmethod
    def preset(cls, name: str, **overrides) -> WriterConfig:
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


class MergeConfig(BaseModel):
    """How routed modules become one adapter (`--merge`); see loramem.bank.merging."""

    method: str = Field("none", description="a registered merge method (loramem.bank.merging); none: top-1 only")
    weights: Literal["auto", "mean", "sum", "score"] | list[float] = Field(
        "auto", description="auto: 1 each for ties/dare_ties, 1/k for the rest; score: softmax of routing scores")
    density: float = Field(0.5, gt=0, le=1, description="fraction kept by ties/dare/magnitude_prune")
    majority_sign: Literal["total", "frequency"] = "total"
    svd_rank: int | None = Field(None, description="rank of the svd merge; default the largest input rank")
    temperature: float = Field(1.0, description="softmax temperature of score weights")
    seed: int = Field(0, description="DARE's random drop")

    @field_validator("method")
    @classmethod
    def _method_known(cls, v: str) -> str:
        return _registered("MERGES", v)

    @field_validator("weights")
    @classmethod
    def _weights_finite(cls, v):
        if isinstance(v, list) and not all(math.isfinite(x) for x in v):
            raise ValueError(f"merge weights must be finite numbers (got {v})")
        return v

    @field_validator("temperature")
    @classmethod
    def _temperature_positive(cls, v: float) -> float:
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"temperature must be a finite number > 0 (got {v})")
        return v


class AnswerConfig(BaseModel):
    """Options of one answer (`loramem ask --mode`): prompt shape, context budget and generation length."""

    template: Literal["qa", "completion"] = Field(
        "qa", description="qa: 'Question: q? Answer:' (PhoneBook, PaperQA); completion: the text as is (CounterFact)")
    max_new_tokens: int = Field(32, ge=1, le=4096, description="answer length limit in tokens")
    context_budget: int | None = Field(
        None, description="max prompt tokens; default the model's context length minus max_new_tokens")
    overflow: Literal["error", "truncate"] = Field(
        "error", description="ICL/RAG context over budget: error (default) or truncate (keep the first tokens)")


class AskConfig(AnswerConfig):
    """One question against a bank (`loramem ask`, the server, `loramem.ask`): mode, route, merge, then the
    answer options it shares with every answer (AnswerConfig)."""

    mode: str = Field("lora", description="where the answer's knowledge comes from (loramem.answer.modes)")
    route: str = Field("embed", description="router (fact-level embed routes best on benchmarks/routing_quality.py)")
    top_k: int = Field(1, ge=1, le=64, description="modules to route to (merged unless merge is none)")
    merge: MergeConfig = Field(default_factory=MergeConfig)
    chunks: int | None = Field(None, ge=1, le=256, description="chunks retrieved in rag modes; default the index's")
    lora_candidates: int = Field(8, ge=1, description="modules the lora router asks (prefiltered by embed)")
    resident: int = Field(64, ge=2, description="modules and merged adapters kept loaded (LRU)")

    @field_validator("mode")
    @classmethod
    def _mode_known(cls, v: str) -> str:
        return _registered("MODES", v)

    @field_validator("route")
    @classmethod
    def _route_known(cls, v: str) -> str:
        return _registered("ROUTERS", v)


class ServeConfig(BaseModel):
    """`loramem serve`: an OpenAI-compatible HTTP API over a bank."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: str | None = Field(None, description="require `Authorization: Bearer KEY`; default $LORAMEM_API_KEY")
    max_body_bytes: int = Field(256 * 1024, ge=1024)
    max_tokens: int = Field(256, ge=1, description="largest max_tokens a request may ask for")
    max_concurrent: int = Field(64, ge=1, description="requests in flight before 429")
    max_batch: int = Field(16, ge=1, description="requests decoded together in one mixed-adapter batch")
    batch_window_ms: float = Field(5.0, ge=0, description="how long an idle batcher waits for more requests")
    max_prompt_tokens: int | None = Field(None, ge=1, description="prompt tokens a request may send (400 over it); "
                                          "default the model's context minus the request's max_tokens")
    request_timeout_s: float | None = Field(300.0, gt=0, description="per-request deadline: past it a queued "
                                            "request gets 429, a decoding one ends with finish_reason length")
    prefill_chunk: int = Field(128, ge=0, description="longer prompts are prefilled this many tokens per decode "
                               "step so short requests keep moving (0: whole prompts)")
    max_n: int = Field(8, ge=1, description="largest n (choices per request)")
    ask: AskConfig = Field(default_factory=AskConfig)


class RetrievalConfig(BaseModel):
    """Options of a RAG index (`loramem index`): how documents become chunks and how chunks are found."""

    chunk_tokens: int = Field(128, description="chunk length in base-model tokens")
    overlap: int | None = Field(None, description="tokens shared by consecutive chunks; default min(32, size // 4)")
    method: Literal["bm25", "dense", "hybrid"] = Field(
        "bm25", description="bm25 (bm25s), dense (all-MiniLM-L6-v2 cosine) or hybrid (reciprocal-rank fusion)")
    k: int = Field(3, description="chunks put in the prompt per question")

    @model_validator(mode="after")
    def _check(self) -> RetrievalConfig:
        if self.chunk_tokens < 1:
            raise ValueError(f"chunk size must be >= 1 token (got {self.chunk_tokens})")
        if self.overlap is None:
            self.overlap = min(32, self.chunk_tokens // 4)
        if not 0 <= self.overlap < self.chunk_tokens:
            raise ValueError(f"overlap must be in [0, chunk size) (got {self.overlap} with size {self.chunk_tokens})")
        if self.k < 1:
            raise ValueError(f"k must be >= 1 (got {self.k})")
        return self


# ---- documents, views, generators, judges (issue 4) ----


class EndpointConfig(BaseModel):
    """An OpenAI-compatible chat-completions endpoint (hosted API, vLLM, loramem serve, ...)."""

    base_url: str | None = Field(None, description="e.g. http://127.0.0.1:8000/v1; env LORAMEM_OPENAI_BASE_URL")
    model: str | None = Field(None, description="model name the server knows; env LORAMEM_OPENAI_MODEL")
    api_key: str | None = Field(None, description="env LORAMEM_OPENAI_API_KEY or OPENAI_API_KEY")
    max_retries: int = Field(4, description="retries after a failed request (5xx, 429, connection errors), done by "
                             "the openai client with its exponential backoff")
    concurrency: int = Field(4, description="requests in flight at once")
    timeout_s: float = 120.0
    json_mode: bool = Field(True, description="ask for response_format=json_object where a JSON answer is wanted")

    @classmethod
    def from_env(cls, **given) -> EndpointConfig:
        """Fill what is not given from the environment."""
        st = settings()
        values = {"base_url": st.openai_base_url, "model": st.openai_model, "api_key": st.openai_api_key}
        values.update({k: v for k, v in given.items() if v is not None})
        return cls(**values)


class GeneratorConfig(BaseModel):
    """Which generator writes synthetic views, and how."""

    @field_validator("kind")
    @classmethod
    def _kind_known(cls, v: str) -> str:
        return _registered("GENERATORS", v)

    kind: str = Field("template", description="a registered generator (loramem.generators)")
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

    @field_validator("kind")
    @classmethod
    def _kind_known(cls, v: str) -> str:
        return _registered("JUDGES", v)

    kind: str = Field("embed", description="a registered judge (loramem.judges)")
    model: str = Field(DEFAULT_MODEL, description="local judge model (kind=local)")
    endpoint: EndpointConfig = Field(default_factory=EndpointConfig)
    batch_size: int = 8


def writer_config(preset: str = "fast", **given: Any) -> WriterConfig:
    """`WriterConfig.preset(preset, **given)` with options given as None left to the preset; one UserError line
    for a bad or unknown option (the CLI and the Python API build the writer's config here)."""
    known = set(WriterConfig.model_fields)
    unknown = sorted(set(given) - known)
    if unknown:
        raise UserError(f"unknown writer option(s) {', '.join(unknown)}; choose from {', '.join(sorted(known))}")
    try:
        return WriterConfig.preset(preset, **{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        raise user_error(exc) from None


def ask_config(merge: str | MergeConfig = "none", weights: Any = "auto", density: float = 0.5,
               **given: Any) -> AskConfig:
    """An AskConfig from flat options (the CLI's flags, `loramem.ask` keywords): merge options are gathered into
    its MergeConfig; options given as None keep their defaults."""
    given = {k: v for k, v in given.items() if v is not None}
    unknown = sorted(set(given) - set(AskConfig.model_fields))
    if unknown:
        raise UserError(f"unknown ask option(s) {', '.join(unknown)}; choose from "
                        f"{', '.join(sorted(AskConfig.model_fields))}")
    m = merge if isinstance(merge, MergeConfig) else build(MergeConfig, method=merge, weights=weights, density=density)
    return build(AskConfig, merge=m, **given)
