"""`bank export`: each module's serving version as a portable PEFT folder with a model card.

    OUT/NAME/adapter_config.json        base_model_name_or_path = the base's Hugging Face id, never a local path
    OUT/NAME/adapter_model.safetensors
    OUT/NAME/loramem.json               the training record: base id + fingerprint of the exact weights, config
    OUT/NAME/README.md                  model card: base, data hash, rank, targets, exact match, training, licence
    OUT/modules.json                    the index (name, version, base, rank, key text)

PEFT, vLLM and LoRAX load a folder as is; `serve_lines` gives the commands that do it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from loramem.bank.manifest import ModuleInfo
from loramem.config import DEFAULT_MODEL
from loramem.models import SMOLLM2_HUB_ID, TINY_RANDOM_ID

VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # --max-lora-rank values vLLM accepts


def base_hub_id(info: ModuleInfo) -> str:
    """The hub id a module names as its base (modules written before ids were recorded get theirs derived)."""
    recorded = (info.record.get("base") or {}).get("hub_id")
    if recorded:
        return recorded
    known = {DEFAULT_MODEL: SMOLLM2_HUB_ID, "tiny-random": TINY_RANDOM_ID}
    if info.base_name in known:
        return known[info.base_name]
    name = info.base_name
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return name
    return f"local/{Path(name).name or 'model'}"


def export_module(info: ModuleInfo, src: Path, dest: Path) -> Path:
    """Write one module's portable folder at `dest` (adapter files, record, model card)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / "adapter_model.safetensors", dest / "adapter_model.safetensors")
    conf = json.loads((src / "adapter_config.json").read_text())
    conf["base_model_name_or_path"] = base_hub_id(info)
    (dest / "adapter_config.json").write_text(json.dumps(conf, indent=2, sort_keys=True))
    record = {**info.record, "base": {**(info.record.get("base") or {}), "hub_id": base_hub_id(info)}}
    (dest / "loramem.json").write_text(json.dumps(record, indent=2, default=str))
    (dest / "README.md").write_text(model_card(info, conf))
    return dest


def max_lora_rank(ranks: list[int]) -> int:
    """The smallest vLLM --max-lora-rank that holds every rank (vLLM takes ranks up to 512)."""
    top = max(ranks, default=8)
    return next((r for r in VLLM_RANKS if r >= top), VLLM_RANKS[-1])


def serve_lines(mods: list[ModuleInfo], out: Path, absolute: bool = True) -> list[str]:
    """The vLLM command and the PEFT call that load the exported folders."""
    if not mods:
        return []
    out = Path(out).resolve() if absolute else Path(out)
    base = base_hub_id(mods[0])
    loras = " ".join(f"{m.name}={out / m.name}" for m in mods)
    return [f"vllm serve {base} --enable-lora --max-lora-rank {max_lora_rank([m.rank for m in mods])} "
            f"--lora-modules {loras}",
            f'PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base}"), "{out / mods[0].name}")']


def model_card(info: ModuleInfo, conf: dict) -> str:
    """README.md of one exported module: what it is, what it was trained on and how, how to load it."""
    rec, cfg = info.record, info.record.get("config") or {}
    base = rec.get("base") or {}
    hub = base_hub_id(info)
    licence = rec.get("data_license") or "not recorded (pass --data-license when writing the module)"
    em = rec.get("exact_match")
    rows = [
        ("base model", f"`{hub}`"),
        ("exact weights trained on", f"{base.get('weights') or base.get('source') or hub} "
                                     f"(loramem fingerprint `{info.base_fingerprint}`)"),
        ("data", f"{rec.get('n_examples', len(info.keys))} facts, {info.tokens} knowledge tokens, "
                 f"data hash `{rec.get('data_hash', '?')}`"),
        ("data licence", licence),
        ("LoRA", f"rank {info.rank}, alpha {conf.get('lora_alpha')}, rsLoRA {conf.get('use_rslora')}, dropout "
                 f"{conf.get('lora_dropout')}, targets {', '.join(info.targets)}, {info.n_params:,} parameters"),
        ("exact match on its facts", "not measured" if em is None else f"{em:.3f} (teacher-forced greedy check)"),
        ("training", f"{rec.get('steps')} steps ({rec.get('epochs')} epochs, stopped: {rec.get('stopped')}), lr "
                     f"{cfg.get('lr')} {cfg.get('schedule')}, batch {cfg.get('batch_size')}, loss on "
                     f"{cfg.get('loss')}, format {cfg.get('format')}, {rec.get('precision')}, seed {cfg.get('seed')}, "
                     f"{rec.get('wall_s')} s"),
        ("software", ", ".join(f"{k} {v}" for k, v in (rec.get("packages") or {}).items())),
        ("module", f"{info.id}, checksum `{info.checksum[:16]}`, written {info.created}"),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    note = ""
    if hub == TINY_RANDOM_ID:
        note = ("\n`loramem/tiny-random-llama` is not on the Hugging Face hub: it is a random 2-layer model built "
                "locally from a seed (`loramem.models.load_base(\"tiny-random\")`) for tests.\n")
    elif hub == SMOLLM2_HUB_ID and "GGUF" in str(base.get("weights")):
        note = ("\nThe module was trained on the GGUF-dequantized weights, not the hub's bf16 ones; reading it with "
                "the hub's weights costs a little exact match (see loramem's README, \"What the GGUF base costs\").\n")
    vllm, peft = serve_lines([info], Path(".."), absolute=False)  # paths relative to this folder
    return (f"---\nbase_model: {hub}\nlibrary_name: peft\ntags: [lora, loramem, knowledge-memory]\n---\n\n"
            f"# {info.name} (loramem memory module, v{info.version})\n\n"
            f"A LoRA adapter that stores facts: {info.key_text[:300]}\n\n| | |\n|---|---|\n{table}\n{note}\n"
            f"## Load it\n\nFrom this folder:\n\n```bash\n{vllm}\n```\n\n"
            f"```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
            f"model = {peft}\n```\n")
