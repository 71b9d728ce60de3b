"""Batch reports: one self-contained HTML page per batch (players, spectrograms, timings, answers,
errors; summary counts and a stage-time chart at the top).

One builder for every way in: `audio-omni report BATCH --out DIR` and `GET /v1/batches/{id}/report`
(service mode: `jobs_from_queue`), and embedded `audio-omni batch`, which writes `report.html` into
its `--out` folder (`jobs_from_manifest`). `render_report` turns the gathered `ReportJob`s into the
page; `media` makes the data URIs (Ogg Opus players, PNG spectrograms).
"""

from __future__ import annotations

from orchestrator.report.collect import InputReader, ReportJob, jobs_from_manifest, jobs_from_queue
from orchestrator.report.html import render_report

__all__ = [
    "DEFAULT_MAX_JOBS",
    "REPORT_FILE",
    "InputReader",
    "ReportJob",
    "jobs_from_manifest",
    "jobs_from_queue",
    "render_report",
]

REPORT_FILE = "report.html"
DEFAULT_MAX_JOBS = 500  # jobs shown in one page (each embeds its audio); the summary counts them all
