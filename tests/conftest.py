"""Shared fixtures: the tiny random base model, the paper's release folder, a CLI runner over real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT.parent / "shared" / "data" / "paper-release"


@pytest.fixture(scope="session")
def tiny_base():
    from loramem.models import load_base

    return load_base("tiny-random")


@pytest.fixture(scope="session")
def real_base():
    from loramem.models import load_base

    return load_base("smollm2-135m")


@pytest.fixture(scope="session")
def paper_dir() -> Path:
    if PAPER.is_dir():
        return PAPER
    from loramem.config import paper_release_dir  # a worktree: the release may sit further up

    found = paper_release_dir()
    if found is None or not found.is_dir():
        pytest.skip("the paper's release data (../shared/data/paper-release) is not beside this checkout")
    return found


def run_cli(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `loramem ARGS` as a user would, in a real process."""
    return subprocess.run([sys.executable, "-m", "loramem.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=ROOT)


def svg_text(path: Path) -> str:
    """The words a plot's SVG shows (title, labels, legend, values), one per line: plots keep their text as text."""
    import html
    import re

    return "\n".join(html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", Path(path).read_text()))


def error_bars(path: Path) -> int:
    """How many sets of error bars a plot's SVG draws (matplotlib draws each as one line collection)."""
    return Path(path).read_text().count('id="LineCollection_')
