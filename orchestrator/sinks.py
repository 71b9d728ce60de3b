"""Where finished jobs go: `ResultSink` writes the audio (if any) and its metadata JSON beside it
through a `Storage` (S3 in service mode, a local folder in embedded mode)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.storage import ResultLocation, Storage


class ResultSink:
    """Writes results under the storage's deterministic keys, so a replay rewrites the same object."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def write(
        self,
        *,
        tenant: str,
        job_id: str,
        batch_id: str | None,
        metadata: Mapping[str, Any],
        audio_bytes: bytes | None,
        ext: str = "wav",
    ) -> ResultLocation:
        """Write the result object (None: metadata only, e.g. understanding answers) then its JSON."""
        return self.storage.put_result(
            tenant=tenant, job_id=job_id, batch_id=batch_id, metadata=metadata, data=audio_bytes, ext=ext
        )
