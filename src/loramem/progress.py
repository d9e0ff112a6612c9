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


def plain_output() -> bool:
    """True when stderr is not a terminal: rich draws nothing there, so progress goes out as plain lines."""
    import sys

    from rich.console import Console

    return not (sys.stderr.isatty() and Console(stderr=True).is_terminal)


PLAIN_EVERY_S = 30.0  # without a terminal rich draws nothing; a plain line this often says the run is alive


def eta_text(step: int, total: int, elapsed: float, max_seconds: float | None, target_em: float | None) -> str:
    """What is left: the sooner of the step budget and --max-seconds, and that it may stop at exact match."""
    left = [elapsed / step * (total - step)] if step else []
    if max_seconds:
        left.append(max(0.0, max_seconds - elapsed))
    text = _clock(min(left)) if left else "?"
    return text + (f" (or sooner, at exact match {target_em:g})" if target_em is not None else "")


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class WriteProgress(OptionalBar):
    """The writer's progress on stderr: a rich bar on a terminal, else a plain line every PLAIN_EVERY_S seconds;
    the ETA honours the step budget, --max-seconds and the early stop at exact match."""

    def __init__(self, total: int, enabled: bool = True, max_seconds: float | None = None,
                 target_em: float | None = None, plain_every_s: float = PLAIN_EVERY_S) -> None:
        import time

        from rich.console import Console

        self.total, self.max_seconds, self.target_em = total, max_seconds, target_em
        self.em: float | None = None
        self.t0 = self.last_line = time.time()
        self.plain_every_s = plain_every_s
        self.console = Console(stderr=True)
        self.plain = enabled and plain_output()
        self.enabled = enabled and not self.plain
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("[bold]writing[/bold]"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
                TextColumn("EM {task.fields[em]}"), TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"),
                transient=True, console=self.console,
            )
            self.task = self.bar.add_task("write", total=total, loss="-", tps="-", em="-", eta="?")

    def update(self, step: int, loss: float, tps: float, em: float | None) -> None:
        import time

        if em is not None:
            self.em = em
        now = time.time()
        eta = eta_text(step, self.total, now - self.t0, self.max_seconds, self.target_em)
        shown = "-" if self.em is None else f"{self.em:.2f}"
        if self.enabled:
            self.bar.update(self.task, completed=step, loss=f"{loss:.3f}", tps=f"{tps:.0f}", em=shown, eta=eta)
        elif self.plain and now - self.last_line >= self.plain_every_s:
            import sys

            self.last_line = now
            print(f"writing: step {step}/{self.total}, loss {loss:.3f}, {tps:.0f} tok/s, EM {shown}, "
                  f"elapsed {_clock(now - self.t0)}, ETA {eta}", file=sys.stderr, flush=True)
