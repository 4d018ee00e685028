"""A report document: sections of blocks (text, bullets, tables, figures), rendered twice.

``write_report`` saves each figure as PNG and PDF under ``figures/`` and writes one self-contained HTML
file (figures embedded as base64 PNG, inline CSS, no scripts or links) and its Markdown twin, which
points at the figure files; both say the same thing because both come from the same blocks.
"""

from __future__ import annotations

import base64
import html
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from lora_analysis.atomic import write_bytes, write_text
from lora_analysis.errors import LoraAnalysisError, utf8
from lora_analysis.layout import ReportDir
from lora_analysis.owned import check_ours


def md_safe(text: str) -> str:
    """``text`` for report.md with raw HTML and Markdown made inert outside code spans: ``&``, ``<`` and ``>``
    become entities, ``[`` and ``]`` are escaped (no link), line breaks become spaces (no heading).

    User strings (sweep and run names, paths, labels) reach the report, and Markdown renderers pass raw HTML
    through. A text with an odd number of backticks has a user's backtick in it: it gets no code spans."""
    text = _one_line(text)
    parts = text.split("`") if text.count("`") % 2 == 0 else [text.replace("`", "\\`")]
    return "`".join(p if i % 2 else _inert(p) for i, p in enumerate(parts))


def code(text: str) -> str:
    """``text`` (a name the user chose) as a code span: its backticks shown as ``'``, which would end it."""
    return "`" + _one_line(str(text)).replace("`", "'") + "`"


def _one_line(text: str) -> str:
    """Line breaks as spaces; bytes a file name had that are not UTF-8 as ``\\xff``."""
    text = utf8(str(text))
    return " ".join(text.splitlines()) if "\n" in text or "\r" in text else text


def _inert(text: str) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("[", "\\[").replace("]", "\\]")


@dataclass(frozen=True)
class Paragraph:
    """A paragraph; ``**bold**`` and ```code``` marks are rendered in both files."""

    text: str

    def html(self, pngs: dict[str, bytes]) -> str:
        return f"<p>{_inline(self.text)}</p>"

    def markdown(self) -> str:
        return md_safe(self.text)


@dataclass(frozen=True)
class Bullets:
    """A bulleted list of sentences."""

    items: tuple[str, ...]

    def html(self, pngs: dict[str, bytes]) -> str:
        return "<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in self.items) + "</ul>"

    def markdown(self) -> str:
        return "\n".join(f"- {md_safe(item)}" for item in self.items)


@dataclass(frozen=True)
class Table:
    """A table with its caption above it; cells are written by ``cell``."""

    frame: pd.DataFrame
    caption: str = ""

    def html(self, pngs: dict[str, bytes]) -> str:
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in self.frame.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(cell(v))}</td>" for v in row) + "</tr>"
                       for row in self.frame.itertuples(index=False))
        # a wide table (the run table has a column per config key) scrolls in its own box, not the page
        return (f'<div class="wide"><table><caption>{_inline(self.caption)}</caption><tr>{head}</tr>{body}</table>'
                "</div>")

    def markdown(self) -> str:
        escape = lambda v: md_safe(cell(v)).replace("|", "\\|")  # noqa: E731
        lines = [f"*{md_safe(self.caption)}*", "", "| " + " | ".join(escape(c) for c in self.frame.columns) + " |",
                 "|" + "---|" * len(self.frame.columns)]
        lines += ["| " + " | ".join(escape(v) for v in row) + " |" for row in self.frame.itertuples(index=False)]
        return "\n".join(lines)


@dataclass(frozen=True)
class Plot:
    """A drawn figure, saved as ``figures/<name>.png`` and ``.pdf``; embedded in the HTML, linked in Markdown."""

    name: str
    figure: Figure
    caption: str

    def html(self, pngs: dict[str, bytes]) -> str:
        data = base64.b64encode(pngs[self.name]).decode("ascii")
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(self.caption)}">'
                f"<figcaption>{_inline(self.caption)} ({html.escape(self.name)}.png)</figcaption></figure>")

    def markdown(self) -> str:
        figure = f"{ReportDir.FIGURES}/{self.name}"
        caption = md_safe(self.caption)
        return f"![{caption}]({figure}.png)\n\n*{caption}* ([PDF]({figure}.pdf))"


Block = Paragraph | Bullets | Table | Plot


@dataclass
class Section:
    """A titled list of blocks. ``plot`` draws lazily and says why when there is nothing to draw."""

    title: str
    blocks: list[Block] = field(default_factory=list)

    def text(self, paragraph: str) -> None:
        self.blocks.append(Paragraph(paragraph))

    def bullets(self, items: list[str]) -> None:
        if items:
            self.blocks.append(Bullets(tuple(items)))

    def table(self, frame: pd.DataFrame, caption: str = "") -> None:
        self.blocks.append(Table(frame, caption))

    def plot(self, name: str, draw: Callable[[], Figure], caption: str) -> None:
        try:
            self.blocks.append(Plot(name, draw(), caption))
        except LoraAnalysisError as missing:
            self.text(f"Not drawn — {caption} Reason: {missing}.")


def cell(value) -> str:
    """One table cell: em dash for missing values, thousands separators, 4 significant digits."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or (hasattr(value, "dtype") and getattr(value.dtype, "kind", "") in "iu"):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.3em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.85em}th,td{border:1px solid #ccc;padding:.25em .5em;
text-align:left;vertical-align:top}th{background:#f2f2f2}caption{caption-side:top;text-align:left;font-weight:600;
padding:.3em 0}figure{margin:1em 0 1.5em}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#444}code{background:#f4f4f4;padding:0 .2em}
.wide{max-width:100%;overflow-x:auto}p,li,figcaption{overflow-wrap:anywhere}
"""


def _inline(text: str) -> str:
    """HTML for a paragraph with **bold** and `code` marks (the same text the Markdown shows; an odd number
    of backticks: no code spans, as in ``md_safe``)."""
    parts = html.escape(_one_line(text)).split("**")
    text = "".join(f"<strong>{p}</strong>" if k % 2 else p for k, p in enumerate(parts))
    if text.count("`") % 2:
        return text
    parts = text.split("`")
    return "".join(f"<code>{p}</code>" if k % 2 else p for k, p in enumerate(parts))


def save_figures(sections: list[Section], figures_dir: Path, dpi: int = 110) -> dict[str, bytes]:
    """Each figure as ``<name>.png`` and ``<name>.pdf`` (atomic writes); returns the PNG bytes by name."""
    pngs = {}
    for section in sections:
        for block in section.blocks:
            if not isinstance(block, Plot):
                continue
            name, figure = block.name, block.figure
            for fmt in ("png", "pdf"):
                buffer = io.BytesIO()
                # no creation date in the PDF: the same results give the same bytes
                figure.savefig(buffer, format=fmt, dpi=dpi, metadata={"CreationDate": None} if fmt == "pdf" else None)
                write_bytes(figures_dir / f"{name}.{fmt}", buffer.getvalue())
                if fmt == "png":
                    pngs[name] = buffer.getvalue()
                    figure.set_layout_engine("none")  # keep the layout just computed: half the cost for the PDF
    return pngs


def report_folder(out_dir: str | Path) -> ReportDir:
    """``out_dir`` as a report folder, refused (one line) when it holds files lora-analysis did not write."""
    out = ReportDir(Path(out_dir))
    check_ours(out.path, "report", ReportDir.owns, "choose another out=")
    return out


def write_report(title: str, sections: list[Section], out_dir: str | Path) -> tuple[Path, Path]:
    """Save the figures under ``out_dir/figures`` and write ``report.html`` and ``report.md``; returns both paths."""
    out = report_folder(out_dir)
    pngs = save_figures(sections, out.figures_path)
    stamp = f"Built {time.strftime('%Y-%m-%d %H:%M')} by lora-analysis report."
    body = "".join(f"<h2>{html.escape(s.title)}</h2>" + "".join(b.html(pngs) for b in s.blocks)
                   for s in sections)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><p>{stamp}</p>{body}</body></html>\n")
    markdown = f"# {md_safe(title)}\n\n{stamp}\n\n" + "\n\n".join(
        f"## {md_safe(s.title)}\n\n" + "\n\n".join(b.markdown() for b in s.blocks) for s in sections) + "\n"
    return write_text(out.html_path, page), write_text(out.markdown_path, markdown)
