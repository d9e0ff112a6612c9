"""An OpenAI-compatible HTTP API whose memory is a loramem bank (`loramem serve`)."""

from loramem.serve.app import create_app

__all__ = ["create_app"]
