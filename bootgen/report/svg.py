"""A boot timeline as hand-written SVG: one row per image, stages as coloured segments.

Pure text generation, no plotting library. The output depends only on the arguments (numbers are
printed with fixed precision, nothing reads the clock), so the same numbers give the same bytes.
`to_png` converts with rsvg-convert or ImageMagick's convert when one is installed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from ..errors import CommandError
from ..run import run, which

WIDTH = 960
LEFT = 110  # row labels
RIGHT = 150  # end-of-row labels
TOP = 64  # title and subtitle
ROW_H = 30
ROW_GAP = 18
FONT = 'font-family="sans-serif"'
CHAR_W = 6.4  # rough width of one character at font-size 11, to decide whether a label fits
# One colour per segment (ColorBrewer "Paired", light shades: dark text stays readable) and
# one for the final marker.
COLORS = ("#a6cee3", "#fdbf6f", "#b2df8a", "#cab2d6", "#fb9a99", "#ffff99", "#e0e0e0")
MARKER = "#e31a1c"


@dataclass(frozen=True)
class Row:
    """One timeline row: when each stage was reached (seconds), missing stages left out."""

    label: str
    marks: Mapping[str, float]
    note: str = ""  # shown after the row, e.g. "1 of 3 boots FAILED"
    extra: Mapping[str, str] = field(default_factory=dict)  # attributes for the row's <g>


def _num(x: float) -> str:
    return f"{x:.1f}"


def nice_step(span: float, target: int = 8) -> float:
    """A 1-2-5 tick step giving at most about `target` ticks over `span`."""
    if span <= 0:
        return 1.0
    raw = span / target
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 5.0, 10.0):
        if m * mag >= raw - 1e-12:
            return round(m * mag, 12)
    return round(10 * mag, 12)  # pragma: no cover - the loop always returns


def axis_ticks(end: float, target: int = 8) -> tuple[list[float], int]:
    """Tick values from 0 past `end` (the last tick >= end) and the decimals to print them."""
    step = nice_step(end, target)
    count = max(1, math.ceil(end / step - 1e-9))
    decimals = max(0, -math.floor(math.log10(step)))
    return [round(k * step, 9) for k in range(count + 1)], decimals


def segments(marks: Mapping[str, float], stages: Sequence[str]
             ) -> list[tuple[str, float, float]]:
    """(stage, start, end): each present stage up to the next present one; the last present
    stage is the end point and gets no segment."""
    present = [(s, marks[s]) for s in stages if s in marks]
    out = []
    for (stage, start), (_, end) in zip(present, present[1:], strict=False):
        out.append((stage, start, max(start, end)))
    return out


def timeline(title: str, subtitle: str, rows: Sequence[Row], stages: Sequence[str]) -> str:
    """The SVG document. `stages` in order; the last one is drawn as an end marker."""
    ends = [max(r.marks.values()) for r in rows if r.marks]
    ticks, decimals = axis_ticks(max(ends, default=1.0) or 1.0)
    scale_end = ticks[-1]
    plot_w = WIDTH - LEFT - RIGHT
    axis_y = TOP + len(rows) * (ROW_H + ROW_GAP) + 4
    legend_y = axis_y + 62
    height = legend_y + 34

    def x(t: float) -> str:
        return _num(LEFT + t / scale_end * plot_w)

    color = {s: COLORS[i % len(COLORS)] for i, s in enumerate(stages[:-1])}
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" {FONT} font-size="11">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        f'<text x="{LEFT}" y="24" font-size="15" font-weight="bold">{escape(title)}</text>',
        f'<text x="{LEFT}" y="44" fill="#444444">{escape(subtitle)}</text>',
    ]
    # grid and axis
    out.append('<g class="axis" stroke="#cccccc">')
    for t in ticks:
        out.append(f'<line x1="{x(t)}" y1="{TOP - 6}" x2="{x(t)}" y2="{axis_y}"/>')
    out.append("</g>")
    out.append(f'<line x1="{LEFT}" y1="{axis_y}" x2="{x(scale_end)}" y2="{axis_y}" '
               'stroke="#333333"/>')
    out.append('<g class="ticks" text-anchor="middle">')
    for t in ticks:
        out.append(f'<line x1="{x(t)}" y1="{axis_y}" x2="{x(t)}" y2="{axis_y + 5}" '
                   'stroke="#333333"/>')
        out.append(f'<text x="{x(t)}" y="{axis_y + 18}">{t:.{decimals}f}</text>')
    out.append("</g>")
    out.append(f'<text x="{_num(LEFT + plot_w / 2)}" y="{axis_y + 34}" text-anchor="middle" '
               'fill="#444444">guest uptime (seconds)</text>')
    # rows
    for i, row in enumerate(rows):
        y = TOP + i * (ROW_H + ROW_GAP)
        mid = _num(y + ROW_H / 2 + 4)
        attrs = "".join(f" {k}={quoteattr(v)}" for k, v in sorted(row.extra.items()))
        out.append(f'<g class="row"{attrs}>')
        out.append(f'<text x="{LEFT - 10}" y="{mid}" text-anchor="end" font-size="13" '
                   f'font-weight="bold">{escape(row.label)}</text>')
        for stage, start, end in segments(row.marks, stages):
            w = (end - start) / scale_end * plot_w
            out.append(f'<rect class="segment" x="{x(start)}" y="{y}" width="{_num(w)}" '
                       f'height="{ROW_H}" fill="{color.get(stage, COLORS[-1])}" '
                       f'stroke="#ffffff"><title>{escape(row.label)}: {escape(stage)} '
                       f"{start:.2f}–{end:.2f} s</title></rect>")
            if len(stage) * CHAR_W + 6 <= w:
                out.append(f'<text x="{_num(LEFT + (start + end) / 2 / scale_end * plot_w)}" '
                           f'y="{mid}" text-anchor="middle" fill="#222222">{escape(stage)}'
                           "</text>")
        if row.marks:
            last_stage, last = max(row.marks.items(), key=lambda kv: kv[1])
            out.append(f'<line class="marker" x1="{x(last)}" y1="{y - 3}" x2="{x(last)}" '
                       f'y2="{y + ROW_H + 3}" stroke="{MARKER}" stroke-width="3"/>')
            end_label = f"{last_stage} {last:.2f} s" + (f" · {row.note}" if row.note else "")
        else:
            last = 0.0
            end_label = row.note or "no stage reached"
        out.append(f'<text x="{_num(float(x(last)) + 8)}" y="{mid}">{escape(end_label)}</text>')
        out.append("</g>")
    # legend
    out.append('<g class="legend">')
    lx = float(LEFT)
    for stage in stages[:-1]:
        out.append(f'<rect x="{_num(lx)}" y="{legend_y - 10}" width="14" height="12" '
                   f'fill="{color[stage]}"/>')
        out.append(f'<text x="{_num(lx + 19)}" y="{legend_y}">{escape(stage)}</text>')
        lx += 19 + len(stage) * CHAR_W + 18
    out.append(f'<line x1="{_num(lx + 6)}" y1="{legend_y - 11}" x2="{_num(lx + 6)}" '
               f'y2="{legend_y + 3}" stroke="{MARKER}" stroke-width="3"/>')
    out.append(f'<text x="{_num(lx + 15)}" y="{legend_y}">{escape(stages[-1])} reached</text>')
    out.append(f'<text x="{LEFT}" y="{legend_y + 20}" fill="#444444">each segment runs from '
               "reaching the stage it names to reaching the next one</text>")
    out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def to_png(svg: Path) -> tuple[Path | None, str]:
    """Convert beside the SVG; (png, "") or (None, one line saying why not)."""
    png = svg.with_suffix(".png")
    if which("rsvg-convert"):
        argv = ["rsvg-convert", "-o", str(png), str(svg)]
    elif which("convert"):
        argv = ["convert", str(svg), str(png)]
    else:
        return None, ("no SVG converter (rsvg-convert from librsvg2-bin or convert from "
                      "imagemagick) is installed; PNG skipped")
    try:
        proc = run(argv, check=False, timeout=60)
    except CommandError as e:
        return None, f"{argv[0]}: {e.message}; PNG skipped"
    if proc.returncode != 0 or not png.is_file():
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        why = lines[-1] if lines else f"exit status {proc.returncode}"
        return None, f"{argv[0]} could not convert {svg.name}: {why}; PNG skipped"
    return png, ""


def gantt(title: str, subtitle: str, spans: Sequence[tuple[str, float, float, str]]) -> str:
    """One row per (name, start, end, result), like `systemd-analyze plot` for stage one:
    done bars blue, failed red, unfinished grey; events (end == start) as a tick."""
    fill = {"done": "#a6cee3", "failed": "#fb9a99", "unfinished": "#e0e0e0"}
    end = max((e for _n, _s, e, _r in spans), default=1.0) or 1.0
    ticks, decimals = axis_ticks(end)
    scale_end = ticks[-1]
    left, row_h, top = 24, 16, TOP
    plot_w = WIDTH - left - 24
    height = top + len(spans) * row_h + 48

    def x(t: float) -> str:
        return _num(left + t / scale_end * plot_w)

    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" {FONT} font-size="10">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        f'<text x="{left}" y="24" font-size="15" font-weight="bold">{escape(title)}</text>',
        f'<text x="{left}" y="44" fill="#444444">{escape(subtitle)}</text>',
        '<g class="axis" stroke="#eeeeee">',
    ]
    bottom = top + len(spans) * row_h
    for t in ticks:
        out.append(f'<line x1="{x(t)}" y1="{top - 4}" x2="{x(t)}" y2="{bottom}"/>')
    out.append("</g>")
    out.append('<g class="ticks" text-anchor="middle" fill="#444444">')
    for t in ticks:
        out.append(f'<text x="{x(t)}" y="{bottom + 14}">{t:.{decimals}f} s</text>')
    out.append("</g>")
    for i, (name, start, stop, result) in enumerate(spans):
        y = top + i * row_h
        label = f"{name} {stop - start:.2f} s" if stop > start else name
        out.append(f'<g class="span" data-result="{result}">')
        if stop > start:
            out.append(f'<rect x="{x(start)}" y="{y + 2}" '
                       f'width="{_num((stop - start) / scale_end * plot_w)}" '
                       f'height="{row_h - 4}" fill="{fill.get(result, fill["done"])}"/>')
        else:
            out.append(f'<line x1="{x(start)}" y1="{y + 2}" x2="{x(start)}" '
                       f'y2="{y + row_h - 2}" stroke="#1f78b4" stroke-width="2"/>')
        anchor_x = float(x(stop)) + 4
        anchor = "start"
        if anchor_x + len(label) * 5.6 > WIDTH:  # no room after the bar: before it
            anchor_x, anchor = float(x(start)) - 4, "end"
        out.append(f'<text x="{_num(anchor_x)}" y="{y + row_h - 4}" text-anchor="{anchor}">'
                   f"{escape(label)}</text>")
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"
