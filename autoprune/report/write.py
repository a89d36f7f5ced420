"""Write a job's report files next to its report.json."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autoprune.report.html import render_html
from autoprune.report.plots import png_bytes, report_figures


def write_report_files(out_dir: Path, report: Mapping[str, Any]) -> list[Path]:
    """Write the figures the report has data for (``widths.png``, ``macs.png``, ``search.png``,
    ``finetune.png``) and ``report.html``, which embeds them; returns the paths written."""
    out_dir = Path(out_dir)
    images = {name: png_bytes(fig) for name, fig in report_figures(report).items()}
    paths = []
    for name, data in images.items():
        path = out_dir / name
        path.write_bytes(data)
        paths.append(path)
    page = out_dir / "report.html"
    page.write_text(render_html(report, images), encoding="utf-8")
    return [*paths, page]
