"""Chat models that write text for loramem: an OpenAI-compatible HTTP endpoint, or a local Hugging Face model.

Both take a list of conversations (lists of {"role", "content"} messages) and return one reply per conversation:

    llm = OpenAIChat(EndpointConfig.from_env())          # hosted API, vLLM, `loramem serve`, ...
    llm = LocalChat("smollm2-135m")                       # the model's own chat template, batched
    replies = llm.chat([[{"role": "user", "content": "Summarize: ..."}]], max_tokens=200)

View generators (generators.py) and LLM judges (judges.py) are built on these.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from loramem.config import DEFAULT_MODEL, EndpointConfig
from loramem.errors import UserError

Messages = list[dict]


class ChatModel(Protocol):
    name: str  # recorded with everything it writes, e.g. "openai:gpt-4.1" or "local:smollm2-135m"

    def chat(self, conversations: list[Messages], max_tokens: int = 256, temperature: float = 0.0,
             json_mode: bool = False) -> list[str]: ...


class OpenAIChat:
    """Chat completions over HTTP with a concurrency limit; transient failures (connection errors, timeouts, 408,
    409, 429, 5xx) are retried by the openai client itself (exponential backoff with jitter, honouring
    Retry-After), `cfg.max_retries` times."""

    def __init__(self, cfg: EndpointConfig) -> None:
        if not cfg.base_url and not cfg.api_key:
            raise UserError("no OpenAI-compatible endpoint configured; set LORAMEM_OPENAI_BASE_URL (e.g. "
                            "http://127.0.0.1:8000/v1) or OPENAI_API_KEY, and LORAMEM_OPENAI_MODEL")
        if not cfg.model:
            raise UserError("no model name for the OpenAI-compatible endpoint; set LORAMEM_OPENAI_MODEL "
                            "(e.g. gpt-4.1) or pass --endpoint-model")
        from openai import OpenAI

        self.cfg = cfg
        self.name = f"openai:{cfg.model}"
        self.client = OpenAI(base_url=cfg.base_url, api_key=cfg.api_key or "not-needed",
                             max_retries=cfg.max_retries, timeout=cfg.timeout_s)

    def chat(self, conversations: list[Messages], max_tokens: int = 256, temperature: float = 0.0,
             json_mode: bool = False) -> list[str]:
        """One reply per conversation, at most `concurrency` requests in flight."""
        if not conversations:
            return []
        with ThreadPoolExecutor(max_workers=max(1, self.cfg.concurrency)) as pool:
            return list(pool.map(lambda m: self._one(m, max_tokens, temperature, json_mode), conversations))

    def _one(self, messages: Messages, max_tokens: int, temperature: float, json_mode: bool) -> str:
        import openai

        use_json = json_mode and self.cfg.json_mode
        tries = self.cfg.max_retries + 1
        where = self.cfg.base_url or "api.openai.com"
        try:
            try:
                return self._create(messages, max_tokens, temperature, use_json)
            except openai.BadRequestError:
                if not use_json:
                    raise
                # servers without JSON mode: ask again in plain text, parse robustly
                return self._create(messages, max_tokens, temperature, False)
        except openai.APIConnectionError as exc:  # APITimeoutError is one too
            raise UserError(f"cannot reach the OpenAI-compatible endpoint at {where} after {tries} tries "
                            f"({_short(exc)}); start the server or set LORAMEM_OPENAI_BASE_URL") from None
        except openai.AuthenticationError:
            raise UserError(f"{self.name} at {where} rejected the API key; set LORAMEM_OPENAI_API_KEY") from None
        except openai.BadRequestError as exc:
            raise UserError(f"{self.name} refused the request: {_short(exc)}") from None
        except (openai.RateLimitError, openai.InternalServerError) as exc:
            raise UserError(f"{self.name} kept failing after {tries} tries: {_short(exc)}") from None
        except openai.APIStatusError as exc:
            raise UserError(f"{self.name} answered HTTP {exc.status_code}: {_short(exc)}") from None

    def _create(self, messages: Messages, max_tokens: int, temperature: float, use_json: bool) -> str:
        kw = {"response_format": {"type": "json_object"}} if use_json else {}
        resp = self.client.chat.completions.create(model=self.cfg.model, messages=messages,
                                                   max_tokens=max_tokens, temperature=temperature, **kw)
        return resp.choices[0].message.content or ""


def _short(exc: Exception | None) -> str:
    return " ".join(str(exc).split())[:200]


class LocalChat:
    """A local causal LM answering through its chat template; greedy (or sampled) and batched, left-padded."""

    def __init__(self, model: str = DEFAULT_MODEL, batch_size: int = 8, seed: int = 0) -> None:
        from loramem.models import load_base

        self.base = load_base(model)
        if getattr(self.base.tokenizer, "chat_template", None) is None:
            raise UserError(f"model '{model}' has no chat template; use an instruct model or --generator openai")
        self.name = f"local:{model}"
        self.batch_size = batch_size
        self.seed = seed

    def chat(self, conversations: list[Messages], max_tokens: int = 256, temperature: float = 0.0,
             json_mode: bool = False) -> list[str]:
        """One reply per conversation, through the one decoding loop (memory modules switched off)."""
        from loramem.answer.decode import Sampling, decode
        from loramem.answer.prompt import chat_prompt

        tok = self.base.tokenizer
        prompts = [chat_prompt(m, tok) for m in conversations]
        sampling = Sampling(temperature=temperature, top_p=0.95 if temperature > 0 else 1.0,
                            repetition_penalty=1.1, seed=self.seed)
        with self._base_only():
            rows = decode(self._model(), tok, prompts, max_tokens, batch_size=self.batch_size, sampling=sampling)
        return [r.text for r in rows]

    def _model(self):
        return self.base.model

    def _base_only(self):
        """Switch any loramem adapter off while generating: a generator must not read from memory."""
        import contextlib

        host = self.base.extra.get("peft")
        return host.disable_adapter() if host is not None and host.peft_config else contextlib.nullcontext()


def chat_model(kind: str, model: str = DEFAULT_MODEL, endpoint: EndpointConfig | None = None,
               batch_size: int = 8, seed: int = 0) -> ChatModel:
    """A chat model by kind: 'openai' (endpoint from config/env) or 'local' (a model name)."""
    if kind == "openai":
        return OpenAIChat(endpoint or EndpointConfig.from_env())
    if kind == "local":
        return LocalChat(model, batch_size, seed)
    raise UserError(f"unknown chat model kind '{kind}'; use local or openai")
