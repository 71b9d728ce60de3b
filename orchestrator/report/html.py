"""The report page: one self-contained HTML document (no script, no request for anything: styles
inline, audio and spectrograms as data URIs), built from `ReportJob`s.

At the top: the summary counts by status, total and mean time, and a stage-time chart (inline SVG:
the seconds each stage took, summed over the jobs, with the mean per job). Then one card per job:
its label, task, status, custom id and metadata, its prompt/transcript, the parameters, the
timings as a stacked bar, the input's player and spectrogram (edits), the result's, the text
answer, the error with its code, and any notes (why something is not shown).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from html import escape

from orchestrator.audio_io import BadAudio
from orchestrator.report.collect import ReportJob
from orchestrator.report.media import EmbeddedAudio, embed_audio

__all__ = ["STAGE_COLOURS", "render_report"]

STATUS_ORDER = ("succeeded", "failed", "dead", "cancelled", "running", "queued")
STAGE_COLOURS = {
    "load": "#6c8ebf",
    "understand": "#9673a6",
    "encode": "#d79b00",
    "sync": "#82b366",
    "generate": "#b85450",
    "encode_audio": "#23a6a6",
    "write": "#7a7a7a",
}
_OTHER_COLOUR = "#b0b0b0"
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f4f4f6;color:#1d1d22}
header{background:#1d1d2e;color:#fff;padding:18px 28px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:0;color:#c8c8d8;font-size:13px}main{padding:18px 28px;max-width:1200px}
.summary{display:flex;flex-wrap:wrap;gap:10px;margin-bottom:14px}
.count{background:#fff;border-radius:8px;padding:10px 16px;box-shadow:0 1px 2px #0002;min-width:90px}
.count b{display:block;font-size:22px}.count span{font-size:12px;color:#555}
section.chart{background:#fff;border-radius:8px;padding:12px 16px;margin-bottom:18px;box-shadow:0 1px 2px #0002}
h2{font-size:15px;margin:0 0 8px}.job{background:#fff;border-radius:8px;padding:12px 16px;margin-bottom:12px;
box-shadow:0 1px 2px #0002;border-left:6px solid #999}.job.succeeded{border-left-color:#2e9d4e}
.job.failed,.job.dead{border-left-color:#c93c3c}.job.cancelled{border-left-color:#c9a23c}
.job h3{margin:0 0 6px;font-size:15px}.badge{display:inline-block;border-radius:10px;padding:1px 9px;font-size:12px;
margin-left:6px;background:#e4e4ea}.badge.succeeded{background:#d5f0dc}.badge.failed,.badge.dead{background:#f6d6d6}
.badge.cancelled{background:#f6ecd0}dl{display:grid;grid-template-columns:max-content 1fr;gap:3px 12px;margin:6px 0;
font-size:13px}dt{color:#666}dd{margin:0;white-space:pre-wrap;word-break:break-word}
.media{display:flex;flex-wrap:wrap;gap:16px;margin:8px 0}.media figure{margin:0}
.media figcaption{font-size:12px;color:#555;margin-bottom:3px}.media img{display:block;border-radius:4px;
width:480px;max-width:100%;height:160px}audio{width:480px;max-width:100%;margin-top:4px}
.answer{background:#eef4ff;border-radius:6px;padding:8px 10px;white-space:pre-wrap;font-size:14px}
.error{background:#fdeeee;border-radius:6px;padding:8px 10px;white-space:pre-wrap;font-size:13px;color:#8a1f1f}
.notes{font-size:12px;color:#666}code{font-size:12px}
"""


def render_report(
    title: str, jobs: Sequence[ReportJob], *, total: int | None = None, generated_at: float | None = None
) -> str:
    """The whole page. `total`: the batch's job count when `jobs` is only its first part."""
    total = len(jobs) if total is None else total
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(generated_at or time.time()))
    shown = "" if total == len(jobs) else f" (the first {len(jobs)} of {total} jobs are shown)"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<header><h1>{escape(title)}</h1><p>{total} jobs; report written {stamp}{escape(shown)}</p></header>",
        "<main>",
        _summary(jobs, total),
        _stage_chart(jobs),
        *(_card(job) for job in jobs),
        "</main></body></html>",
    ]
    return "\n".join(parts)


# --------------------------------------------------------------------------- top of the page


def _summary(jobs: Sequence[ReportJob], total: int) -> str:
    counts = Counter(job.status for job in jobs)
    cells = [("jobs", str(total))]
    cells += [(status, str(counts[status])) for status in STATUS_ORDER if counts[status]]
    cells += [(status, str(n)) for status, n in sorted(counts.items()) if status not in STATUS_ORDER]
    timed = [job.seconds for job in jobs if job.timings]
    if timed:
        cells.append(("job seconds (sum)", f"{sum(timed):.1f}"))
        cells.append(("job seconds (mean)", f"{sum(timed) / len(timed):.2f}"))
    ends = [job.finished_at for job in jobs if job.finished_at]
    starts = [job.submitted_at for job in jobs if job.submitted_at]
    if ends and starts:
        cells.append(("wall s (submit to last end)", f"{max(ends) - min(starts):.1f}"))
    html = "".join(f'<div class="count"><b>{escape(v)}</b><span>{escape(k)}</span></div>' for k, v in cells)
    return f'<section class="summary">{html}</section>'


def _stage_chart(jobs: Sequence[ReportJob]) -> str:
    """Seconds per stage, summed over the jobs (bar) with the mean per job that ran it (label)."""
    sums: dict[str, float] = {}
    runs: Counter[str] = Counter()
    for job in jobs:
        for stage, seconds in job.timings.items():
            sums[stage] = sums.get(stage, 0.0) + seconds
            runs[stage] += 1
    if not sums:
        return '<section class="chart"><h2>Time per stage</h2><p class="notes">no job recorded timings</p></section>'
    stages = sorted(sums, key=lambda s: (list(STAGE_COLOURS).index(s) if s in STAGE_COLOURS else 99, s))
    longest = max(sums.values()) or 1.0
    row, label_w, bar_w = 26, 120, 560
    rows = []
    for i, stage in enumerate(stages):
        y = i * row
        width = max(1.0, bar_w * sums[stage] / longest)
        text = f"{sums[stage]:.2f} s total, {sums[stage] / runs[stage]:.3f} s mean over {runs[stage]}"
        rows.append(
            f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end" font-size="12">{escape(stage)}</text>'
            f'<rect x="{label_w}" y="{y + 4}" width="{width:.1f}" height="18" rx="3" fill="{_colour(stage)}">'
            f"<title>{escape(stage)}: {escape(text)}</title></rect>"
            f'<text x="{label_w + width + 6:.1f}" y="{y + 17}" font-size="12" fill="#444">{escape(text)}</text>'
        )
    height = row * len(stages) + 4
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="time per stage" width="100%" '
        f'viewBox="0 0 {label_w + bar_w + 260} {height}" height="{height}">{"".join(rows)}</svg>'
    )
    return f'<section class="chart"><h2>Time per stage (all jobs)</h2>{svg}</section>'


def _colour(stage: str) -> str:
    return STAGE_COLOURS.get(stage, _OTHER_COLOUR)


# --------------------------------------------------------------------------- one job


def _card(job: ReportJob) -> str:
    status = escape(job.status)
    head = f'<h3>#{escape(job.label)} <code>{escape(job.task)}</code><span class="badge {status}">{status}</span></h3>'
    facts: list[tuple[str, str]] = [("job id", job.job_id)]
    if job.custom_id:
        facts.append(("custom id", job.custom_id))
    if job.metadata:
        facts.append(("metadata", json.dumps(job.metadata, ensure_ascii=False, sort_keys=True)))
    facts += list(job.fields.items())
    if job.params:
        facts.append(("parameters", ", ".join(f"{k}={v}" for k, v in job.params.items())))
    if job.attempts:
        facts.append(("attempts", str(job.attempts)))
    if job.timings:
        stages = ", ".join(f"{k} {v:.3f}" for k, v in job.timings.items())
        facts.append(("timings s", f"{job.seconds:.3f} ({stages})"))
    facts_html = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in facts)
    notes = list(job.notes)
    media = []
    for caption, data, name in (("input", job.input_audio, job.input_name), ("result", job.result, job.result_name)):
        if data is None:
            continue
        try:
            embedded = embed_audio(data, what=f"the {caption} ({name})")
        except (BadAudio, ValueError) as exc:
            notes.append(f"{caption} not shown: {exc}")
            continue
        media.append(_figure(caption, name, embedded))
    body = [f'<article class="job {status}" id="job-{escape(job.job_id)}">', head, f"<dl>{facts_html}</dl>"]
    if job.timings:
        body.append(_timing_bar(job))
    if media:
        body.append(f'<div class="media">{"".join(media)}</div>')
    if job.text is not None:
        body.append(f'<div class="answer"><b>answer:</b> {escape(job.text)}</div>')
    if job.error:
        code = f" [{escape(job.error_code)}]" if job.error_code else ""
        body.append(f'<div class="error"><b>error{code}:</b> {escape(job.error)}</div>')
    if notes:
        body.append('<p class="notes">' + "<br>".join(escape(n) for n in notes) + "</p>")
    body.append("</article>")
    return "".join(body)


def _figure(caption: str, name: str | None, audio: EmbeddedAudio) -> str:
    info = (
        f"{caption}{f' {name}' if name else ''}: {audio.duration_s:.2f} s, {audio.sample_rate} Hz, {audio.channels} ch"
    )
    return (
        f"<figure><figcaption>{escape(info)}</figcaption>"
        f'<img alt="spectrogram of the {escape(caption)}" src="{audio.spectrogram_uri}">'
        f'<audio controls preload="metadata" src="{audio.player_uri}"></audio></figure>'
    )


def _timing_bar(job: ReportJob) -> str:
    """The job's stages as one stacked bar (each stage's share of its time)."""
    total = job.seconds or 1.0
    x = 0.0
    rects = []
    for stage, seconds in job.timings.items():
        width = 480 * seconds / total
        rects.append(
            f'<rect x="{x:.1f}" y="0" width="{max(width, 0.5):.1f}" height="10" fill="{_colour(stage)}">'
            f"<title>{escape(stage)} {seconds:.3f} s</title></rect>"
        )
        x += width
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="480" height="10" role="img" '
        f'aria-label="stage timings">{"".join(rects)}</svg>'
    )
