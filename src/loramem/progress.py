"""The one piece the progress views share: a rich Progress that is drawn only when enabled."""

from __future__ import annotations

from typing import Any


class OptionalBar:
    """Subclasses set `self.enabled` and, when enabled, `self.bar` (a rich Progress); `with view:` draws it."""

    enabled: bool
    bar: Any

    def __enter__(self):
        if self.enabled:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)
