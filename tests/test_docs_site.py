"""The rendered API docs (`make docs`: mkdocs-material + mkdocstrings) build in strict mode, where a reference
to a name that does not exist fails the build."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _build(root: Path, site: Path) -> subprocess.CompletedProcess:
    pytest.importorskip("mkdocstrings")  # the dev extra installs it
    env = {"NO_MKDOCS_2_WARNING": "1", "PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=root,
                          capture_output=True, text=True, timeout=300, env=env)


def test_api_docs_build_strict_and_a_broken_reference_fails(tmp_path):
    r = _build(ROOT, tmp_path / "site")
    assert r.returncode == 0, r.stderr[-2000:]
    page = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "loramem.api.write" in page and "Bank" in page
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "docs", copy / "docs", ignore=shutil.ignore_patterns("datasheets"))
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    with (copy / "docs" / "index.md").open("a") as f:
        f.write("\nSee [the missing function][loramem.api.no_such_function].\n")
    bad = _build(copy, tmp_path / "bad")
    assert bad.returncode != 0 and "no_such_function" in bad.stderr + bad.stdout
