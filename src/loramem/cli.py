"""The `loramem` command line: a thin shell over library calls (each verb is a function you can call).

The app and its verbs live in `loramem.commands`; this module loads them and turns user errors into one line.
"""

from __future__ import annotations

import sys

from loramem.commands import app, console, load_all
from loramem.errors import UserError

load_all()

__all__ = ["app", "main"]


def main() -> None:
    """Entry point: user errors print one line and exit 2, never a traceback."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:
        pass
    try:
        # standalone mode: click prints usage errors (--bogus, a missing option, --top-k x) as the usage line
        # and one error line, exit 2; typer bundles its own click, so its exceptions are not `click`'s.
        app(standalone_mode=True)
    except UserError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("aborted")
        sys.exit(130)


if __name__ == "__main__":
    main()
