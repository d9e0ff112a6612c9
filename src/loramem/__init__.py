"""loramem: LoRA adapters as knowledge memory."""

from loramem.errors import UserError

__version__ = "0.1.0"
__all__ = ["UserError", "__version__"]
