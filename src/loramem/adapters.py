"""LoRA modules on disk and on the model: which layers and modules a config targets, attaching a fresh adapter
to the shared PEFT wrapper, saving one as a flat standard PEFT folder with its run record, and loading it back
(refusing one whose tensors would not all land on this model)."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import torch

from loramem import __version__
from loramem.config import WriterConfig
from loramem.errors import UserError
from loramem.models import Base

RECORD_FILE = "loramem.json"


def parse_layers(spec: str | None, n_layers: int) -> list[int] | None:
    """Layer indices for a spec: '20-29' or '0,5,10' (absolute), 'top 3' or 'top 20%' (the model's upper layers,
    resolved against its depth, so one recipe fits any base model), 'all' or None (every layer: None)."""
    if spec is None or spec.strip().lower() in ("", "all"):
        return None
    top = re.fullmatch(r"top\s*(\d+(?:\.\d+)?)\s*(%?)", spec.strip().lower())
    if top:
        share = float(top.group(1))
        count = math.ceil(n_layers * share / 100) if top.group(2) else int(share)
        if count < 1 or (top.group(2) and share > 100) or (not top.group(2) and share != int(share)):
            raise UserError(f"bad layer spec '{spec}': use e.g. 'top 3' (a whole number >= 1) or 'top 20%'")
        return list(range(max(0, n_layers - count), n_layers))
    out: set[int] = set()
    try:
        for part in spec.split(","):
            part = part.strip()
            if "-" in part:
                a, b = part.split("-", 1)
                out.update(range(int(a), int(b) + 1))
            else:
                out.add(int(part))
    except ValueError:
        raise UserError(f"bad layer spec '{spec}': use e.g. 20-29, 0,5,10, 'top 3' or 'top 20%'") from None
    bad = [i for i in out if not 0 <= i < n_layers]
    if bad or not out:
        raise UserError(f"layers {sorted(bad) or spec} are outside 0-{n_layers - 1} for this model; pick layers in "
                        f"range, or a relative spec such as 'top 3' or 'top 20%'")
    return sorted(out)


def layers_label(spec: str | None, n_layers: int) -> str:
    """The layers a spec resolved to on this model, as a record shows them ('27-29', 'all 30')."""
    layers = parse_layers(spec, n_layers)
    if layers is None:
        return f"all {n_layers}"
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])
    return ",".join(map(str, layers))


def lora_config(cfg: WriterConfig, base: Base):
    """The PEFT LoraConfig for a writer config, validated against the base model's module names."""
    from peft import LoraConfig

    layers = parse_layers(cfg.layers, base.n_layers)
    if cfg.targets.strip() == "all-linear":
        targets: str | list[str] = "all-linear"
        if layers is not None:
            # PEFT applies layers_to_transform to explicit module lists, so expand all-linear ourselves.
            targets = linear_module_names(base.model)
    else:
        targets = [t.strip() for t in cfg.targets.split(",") if t.strip()]
        known = linear_module_names(base.model)
        unknown = [t for t in targets if t not in known]
        if unknown:
            raise UserError(f"target modules {unknown} are not in this model; choose from {', '.join(known)} or all-linear")
    return LoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, use_rslora=cfg.rslora,
        target_modules=targets, layers_to_transform=layers, bias="none", task_type="CAUSAL_LM",
    )


def linear_module_names(model) -> list[str]:
    """Short names of the Linear layers inside the decoder blocks (what `--targets` may name)."""
    names = set()
    for full, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in full and "lora_" not in full:
            parts = full.split(".")
            names.add(parts[-2] if parts[-1] == "base_layer" else parts[-1])  # under PEFT, Linear moves down
    return sorted(names)


def attach(base: Base, config, adapter: str):
    """Add a fresh adapter to the process-wide PEFT wrapper of `base` (created on first use) and activate it."""
    from peft import get_peft_model

    host = base.extra.get("peft")
    if host is None:
        host = get_peft_model(base.model, config, adapter_name=adapter)
        base.extra["peft"] = host
    else:
        if adapter in host.peft_config:
            host.delete_adapter(adapter)
        host.add_adapter(adapter, config)
    host.set_adapter(adapter)
    return host


def adapter_params(host, adapter: str) -> list[torch.nn.Parameter]:
    return [p for n, p in host.named_parameters() if "lora_" in n and f".{adapter}." in n + "."]


def save_adapter(host, adapter: str, out: str | Path, record: dict) -> Path:
    """Save one adapter as a flat standard PEFT folder (adapter_config.json + adapter_model.safetensors)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(host, adapter_name=adapter, save_embedding_layers=False)
    bad = [k for k, v in state.items() if not torch.isfinite(v).all()]
    if bad:  # a diverged run (too high --lr) would save a module that answers nothing
        raise UserError(f"training diverged: {len(bad)} LoRA tensors hold NaN or inf (e.g. {bad[0]}); nothing was "
                        "saved. Lower --lr (e.g. --lr 1e-3) or --alpha")
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(out / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    conf = copy.deepcopy(host.peft_config[adapter])
    conf.base_model_name_or_path = record["base"].get("hub_id") or record["base"]["source"]
    conf.save_pretrained(str(out))
    (out / RECORD_FILE).write_text(json.dumps(record, indent=2, default=str))
    return out


def package_versions() -> dict:
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "loramem": __version__}


def load_adapter(base: Base, path: str | Path, adapter: str):
    """Load a saved module (a PEFT adapter folder) onto the shared PEFT wrapper of `base` and activate it."""
    from peft import PeftModel

    p = Path(path)
    if not (p / "adapter_config.json").is_file():
        raise UserError(f"{p} is not a LoRA module folder (no adapter_config.json); pass the folder `loramem write` made")
    rec = read_record(p)
    if rec and rec.get("base", {}).get("fingerprint") not in (None, base.fingerprint):
        raise UserError(
            f"module {p} was trained for base model '{rec['base'].get('name')}', not '{base.name}'; "
            f"pass --model {rec['base'].get('name')}"
        )
    host = base.extra.get("peft")
    if host is None:
        host = PeftModel.from_pretrained(base.model, str(p), adapter_name=adapter)
        base.extra["peft"] = host
    else:
        if adapter in host.peft_config:
            host.delete_adapter(adapter)
        host.load_adapter(str(p), adapter_name=adapter)
    check_loaded_keys(host, adapter, p)
    host.set_adapter(adapter)
    host.eval()
    return host


def load_weights(host, adapter: str, folder: str | Path) -> None:
    """Copy a saved module's LoRA tensors into the resident adapter `adapter` (same rank, targets and layers)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    check_loaded_keys(host, adapter, folder)  # refuses another shape before anything is copied
    set_peft_model_state_dict(host, load_file(str(Path(folder) / "adapter_model.safetensors")), adapter_name=adapter)


def check_loaded_keys(host, adapter: str, folder: str | Path) -> None:
    """Refuse an adapter whose saved tensors do not all land on the model (renamed or foreign keys would make
    PEFT skip them silently and answer from the base)."""
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open

    f = Path(folder) / "adapter_model.safetensors"
    try:
        with safe_open(str(f), framework="pt") as fh:
            saved = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except Exception as exc:  # a truncated or garbled file
        raise UserError(f"{f} is not a readable safetensors file ({exc}); write the module again") from None
    # save_embedding_layers=False: modules are on linear layers only, and "auto" asks the hub about the base
    state = get_peft_model_state_dict(host, adapter_name=adapter, save_embedding_layers=False)
    want = {k: tuple(v.shape) for k, v in state.items()}
    if saved != want:
        extra, missing = sorted(set(saved) - set(want)), sorted(set(want) - set(saved))
        bad = [k for k in set(saved) & set(want) if saved[k] != want[k]]
        raise UserError(f"{folder}: the adapter's tensors do not match this model ({len(extra)} unknown, "
                        f"{len(missing)} missing, {len(bad)} of another shape, e.g. {(extra or missing or bad)[:1]}); "
                        "it was written for another model or its file was changed: write it again")


def read_record(path: str | Path) -> dict:
    f = Path(path) / RECORD_FILE
    return json.loads(f.read_text()) if f.is_file() else {}
