"""The study report: ``<DIR>/report.html`` (self-contained) and ``<DIR>/report.md`` (figures in ``<DIR>/figures/``)
from the results store ``<DIR>/study.db`` alone.

The report reads the store read-only (so it may run while a study is still running) and never builds a model or
trains. It shows what exists: a study with missing, failed or unfinished jobs renders, saying what is absent and
why. Sections: overview (study, budget, machine, when, counts), the side-by-side model table
(:func:`model_table`), findings (from the numbers, beside the papers' claims, with the seeds and budget behind
them), accuracy vs cost, learning curves, receptive fields, invariance, measured mixer properties, attention as
dynamic convolution, optimisation stability, failures.

``write_report(DIR)`` is what ``mixerlab report DIR`` and the study runner call.
"""

from __future__ import annotations

from pathlib import Path

from ..train.checkpoint import atomic_write
from .document import build_document
from .render import to_html, to_markdown
from .tables import StudyData, model_rows, model_table

HTML = "report.html"
MARKDOWN = "report.md"
FIGURES = "figures"

__all__ = ["FIGURES", "HTML", "MARKDOWN", "StudyData", "build_document", "model_rows", "model_table",
           "write_report"]


def write_report(directory: str | Path) -> list[Path]:
    """Write ``report.html`` and ``report.md`` (and ``figures/*.png``) of the study in ``directory``; return
    ``[html_path, md_path]``. Every file is written atomically (temp file, then rename), so a reader never sees a
    half-written report."""
    d = Path(directory)
    data = StudyData.load(d)
    doc = build_document(data)
    figdir = d / FIGURES
    figdir.mkdir(exist_ok=True)
    names = set()
    for fig in doc.figures:
        names.add(f"{fig.name}.png")
        atomic_write(figdir / f"{fig.name}.png", lambda f, b=fig.png: f.write(b))
    for old in figdir.glob("*.png"):  # figures of an earlier report that this one no longer has
        if old.name not in names:
            old.unlink(missing_ok=True)
    html_path, md_path = d / HTML, d / MARKDOWN
    atomic_write(html_path, lambda f: f.write(to_html(doc).encode()))
    atomic_write(md_path, lambda f: f.write(to_markdown(doc, FIGURES).encode()))
    return [html_path, md_path]
