"""One `APIRouter` per resource: jobs, batches, uploads, and ops (health, metrics)."""

from orchestrator.api.routes import batches, jobs, ops, uploads

__all__ = ["batches", "jobs", "ops", "uploads"]
