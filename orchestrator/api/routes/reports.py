"""Placeholder router: filled in by its feature's change."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
