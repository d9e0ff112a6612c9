"""Module folders on disk: safe names, the adapter-folder check, checksums, stamps and fsynced writes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from pathlib import Path

from loramem.errors import UserError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def check_name(name: str) -> str:
    """A module name that is safe as a folder name inside the bank (no separators, no '..', no hidden files)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
        raise UserError(f"bad module name {name!r}: use letters, digits, '.', '_' or '-' (up to 100), "
                        "starting with a letter or digit, e.g. --name people-2024")
    return name


def folder_checksum(folder: Path) -> str:
    """sha256 over the names and bytes of every file in a module folder."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode() + b"\0")
        _feed(h, f)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    _feed(h, Path(path))
    return h.hexdigest()


def _feed(h, path: Path) -> None:
    """A file's bytes into hash `h`, 1 MiB at a time."""
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)


def check_adapter_folder(folder: Path) -> None:
    """Refuse anything but a PEFT LoRA folder with safetensors weights (pickled .bin files can run code)."""
    if not (folder / "adapter_config.json").is_file():
        raise UserError(f"{folder} is not a PEFT adapter folder (no adapter_config.json)")
    if not (folder / "adapter_model.safetensors").is_file():
        raise UserError(f"{folder} has no adapter_model.safetensors; only safetensors modules are accepted "
                        "(re-save the adapter with safe_serialization=True)")
    bad = [p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
    if bad:
        raise UserError(f"{folder} holds pickled weight files {bad}; only safetensors are accepted, remove them")


def folder_stamp(folder: Path) -> tuple:
    """Each file's path, size, mtime and inode: unchanged stamps mean a checksum verdict still holds."""
    out = []
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        st = f.stat()
        out.append((f.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)


def read_optional_json(path: Path) -> dict:
    """A JSON file's contents, {} when the file is absent; a garbled file is a one-line error."""
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        raise UserError(f"{path} is not valid JSON") from None


def fsync_tree(folder: Path) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(folder)


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(str(folder), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
