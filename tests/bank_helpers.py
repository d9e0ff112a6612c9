"""Tiny real banks for the bank tests: PhoneBook facts, modules trained on tiny-random, real SQLite files."""

from __future__ import annotations

import shutil
from pathlib import Path

from loramem.bank.store import MemoryBank
from loramem.config import WriterConfig
from loramem.data import phonebook

QUICK = dict(rank=4, steps=2, progress=False, target_em=None, lr=1e-3)
# enough for tiny-random to memorize a handful of facts (lr high, early stop at exact match 1.0)
MEMORIZE = dict(rank=8, steps=400, progress=False, target_em=1.0, lr=2e-2, eval_every=20, batch_size=8)


def phonebook_file(folder: Path, n: int = 9, seed: int = 0) -> Path:
    return phonebook.write(phonebook.generate(n, seed), folder / f"pb{n}-{seed}.csv")


ROUTING_FACTS = 12  # the routing tests' bank: 12 PhoneBook facts (seed 0) in 3 modules people-00..02


def routing_bank(folder: Path, base) -> MemoryBank:
    return make_bank(folder / "bank", base, phonebook_file(folder, ROUTING_FACTS), partition=3)


def gold_pairs() -> list[tuple[str, str]]:
    """(question, module holding its fact) for every fact of `routing_bank`."""
    entries = phonebook.generate(ROUTING_FACTS, 0)
    return [(e.question() + "?", f"people-0{i * 3 // ROUTING_FACTS}") for i, e in enumerate(entries)]


def make_bank(root: Path, base, train: Path, name: str = "people", partition: int | None = 3,
              cfg: dict | None = None) -> MemoryBank:
    from loramem.bank.write import write_to_bank

    bank = MemoryBank(root)
    write_to_bank(train, bank, name, base, WriterConfig(**(cfg or QUICK)), partition)
    return bank


def copy_bank(src: MemoryBank, dest: Path) -> MemoryBank:
    shutil.copytree(src.root, dest)
    return MemoryBank(dest)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    """A real uvicorn server for `app` on 127.0.0.1 in a thread (a context manager; stops on exit)."""

    def __init__(self, app, port: int) -> None:
        import threading

        import uvicorn

        self.srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.srv.run, daemon=True)
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self):
        import time

        self.thread.start()
        deadline = time.time() + 60
        while not self.srv.started and time.time() < deadline:
            time.sleep(0.05)
        assert self.srv.started, "the server did not start within 60 s"
        return self

    def __exit__(self, *exc) -> None:
        self.srv.should_exit = True
        self.thread.join(timeout=10)
