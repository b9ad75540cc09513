"""A boot-test's timeline as an SVG, in the manner of systemd-analyze plot: a time axis,
one bar per phase (kernel, initrd, root, shutdown, exitrd), then one bar per initrd unit
from its "Starting" to its "Started" line, labelled with its name and seconds. The .html
form is the same picture in a page."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import BinaryIO

from bookend.archive import write_atomically
from bookend.boottest.report import Report, phase_spans

ROW = 20  # pixels per bar
LEFT = 10
WIDTH = 1400  # the time axis's pixels: the picture (labels too) fits a 1800-pixel window
PHASE_COLOURS = {"kernel": "#8fb3e0", "initrd": "#f2c46d", "root": "#8fd18f",
                 "root's shutdown": "#e59a9a", "exitrd": "#c39be0"}  # fmt: skip
UNIT_COLOUR = "#f7dfa8"


def svg(report: Report) -> str:
    spans = phase_spans(report.phases)
    units = list(report.initrd_units)
    end = max([e for _n, _s, e in spans] + [u.end for u in units] + [1.0])
    scale = min(WIDTH / end, 200.0)  # pixels per second
    width = int(LEFT * 2 + end * scale + 320)
    top = 50
    height = top + ROW * (len(spans) + len(units) + 2) + 20
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{LEFT}" y="20" font-size="16">{escape(_title(report))}</text>',
    ]
    # A line and a label every step seconds, at least 40 pixels apart.
    step = next((n for n in (1, 2, 5, 10, 20, 30, 60, 120) if n * scale >= 40), 300)
    for second in range(0, int(end) + 1, step):
        x = LEFT + second * scale
        out.append(f'<line x1="{x:.1f}" y1="{top - 10}" x2="{x:.1f}" y2="{height - 10}" '
                   f'stroke="#ddd"/>')  # fmt: skip
        out.append(f'<text x="{x:.1f}" y="{top - 14}" fill="#666">{second} s</text>')
    row = 0
    for name, start, stop in spans:
        out.append(_bar(top + row * ROW, start, stop, scale, PHASE_COLOURS.get(name, "#ccc"), name))
        row += 1
    row += 1
    for unit in units:
        out.append(_bar(top + row * ROW, unit.start, unit.end, scale, UNIT_COLOUR, unit.name))
        row += 1
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _title(report: Report) -> str:
    verdict = "passed" if report.passed else "FAILED: " + "; ".join(report.reasons)
    return f"bookend boot-test: {verdict}"


def _bar(y: int, start: float, stop: float, scale: float, colour: str, label: str) -> str:
    x = LEFT + start * scale
    width = max(1.0, (stop - start) * scale)
    text = f"{label} ({stop - start:.2f} s)"
    return (
        f"<g><title>{escape(text)}</title>"
        f'<rect x="{x:.1f}" y="{y}" width="{width:.1f}" height="{ROW - 4}" fill="{colour}" '
        'stroke="#555" stroke-width="0.5"/>'
        f'<text x="{x + width + 4:.1f}" y="{y + ROW - 8}">{escape(text)}</text></g>'
    )


def write_timeline(report: Report, path: Path) -> None:
    """path.svg: the picture; path.html: the picture in a page."""
    picture = svg(report)
    if path.suffix == ".html":
        title = escape(_title(report))
        head = f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>'
        picture = f"{head}<body>\n{picture}</body></html>\n"
    data = picture.encode()

    def write(out: BinaryIO) -> None:
        out.write(data)

    write_atomically(path, write)
