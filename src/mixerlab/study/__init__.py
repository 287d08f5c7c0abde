"""Studies: a question written down as a spec (models x seeds x analyses), run by a resumable runner on local
processes or a Ray cluster into a SQLite store, and answered by a report. Data flows one way:
spec -> jobs (stable ids) -> workers (train / analyse) -> store (runner only) -> report."""

from __future__ import annotations

from .runner import Summary, run_study
from .spec import Job, SpecError, Study, build_study, load_spec
from .store import Store

__all__ = ["Job", "SpecError", "Store", "Study", "Summary", "build_study", "load_spec", "run_study"]
