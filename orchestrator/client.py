"""The Python SDK's historical import path: `from orchestrator.client import Client` keeps working.
The SDK itself lives in `orchestrator.sdk` (reference: docs/sdk.md)."""

from orchestrator.sdk import *  # noqa: F403
from orchestrator.sdk import __all__ as __all__
