"""What a write costs the saved row index past exact search: 30 rows in and out of a bank of N synthetic rows
(random unit vectors). A write now writes the small label delta; before, every write rewrote the whole FAISS
file, which is what folding the delta in still does, once per COMPACT (a tenth) of change:

    PYTHONPATH=src python benchmarks/row_index_update.py [N]     # default 100,000
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from loramem.bank import vindex


class Keys:
    """Row keys as the index reads them: vectors and their labels."""

    def __init__(self, matrix: np.ndarray, labels: np.ndarray) -> None:
        self.matrix, self.labels = matrix, labels

    def __len__(self) -> int:
        return len(self.labels)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    rng = np.random.default_rng(0)
    m = rng.standard_normal((n + 30, 384)).astype(np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    labels = np.arange(n + 30, dtype=np.int64)
    bank = SimpleNamespace(root=Path(tempfile.mkdtemp()))  # the index functions read only bank.root
    print(f"build + save: {timed(lambda: vindex.for_keys(bank, Keys(m[:n], labels[:n]))):.1f} s")
    size = (vindex.folder(bank) / vindex.INDEX_FILE).stat().st_size
    for mode, compact in (("delta", 0.1), ("snapshot", 0.0)):
        vindex.COMPACT = compact
        ts = []
        for _ in range(3):  # a module of 30 rows written, then removed
            for lab in (labels, labels[:n]):
                ts.append(timed(lambda lab=lab: vindex.update(bank, Keys(m[: len(lab)], lab))))
        print(f"{mode}: one write's index update, median {1000 * np.median(ts):.1f} ms "
              f"(index file {size / 1e6:.0f} MB)")
    vindex.COMPACT = 0.1
    vindex.update(bank, Keys(m, labels))
    print(f"open the index with a 30-row delta: {1000 * timed(lambda: vindex.for_keys(bank, Keys(m, labels))):.0f} ms")


if __name__ == "__main__":
    main()
