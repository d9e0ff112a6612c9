"""Errors a user can cause. The CLI prints them in one line and exits 2."""


class UserError(Exception):
    """Bad input from the user; the message names the problem and the fix."""


class ContextTooLong(UserError):
    """A prompt over the tokens the model can read beside its answer (the server's context_length_exceeded)."""
