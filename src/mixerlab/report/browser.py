"""Headless Chromium for the report: dump the DOM after load (tests) and take a PNG screenshot (the README).

``python -m mixerlab.report.browser DIR/report.html shot.png [--size 1400,2400]``
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# A fresh profile, nothing fetched or synced in the background: the page is all the browser does.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def find_chromium() -> str | None:
    """The Chromium executable, or None when none is installed."""
    for c in CANDIDATES:
        path = c if Path(c).is_file() else shutil.which(c)
        if path:
            return str(path)
    return None


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError(f"no Chromium found (tried {', '.join(CANDIDATES)})")
    with tempfile.TemporaryDirectory(prefix="mixerlab-chromium-") as profile:
        return subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                              timeout=timeout, check=False)


def dump_dom(html: str | Path, *, budget_ms: int = 10000, timeout: float = 120.0) -> str:
    """The DOM of ``html`` after its load event (``--virtual-time-budget`` lets its scripts run), as HTML text."""
    p = _run([f"--virtual-time-budget={budget_ms}", "--dump-dom", Path(html).resolve().as_uri()], timeout)
    if p.returncode != 0 or "<html" not in p.stdout:
        raise RuntimeError(f"chromium --dump-dom failed (exit {p.returncode}): {p.stderr[-2000:]}")
    return p.stdout


def screenshot(html: str | Path, png: str | Path, *, width: int = 1400, height: int = 2400,
               budget_ms: int = 10000, timeout: float = 120.0) -> Path:
    """A ``width`` x ``height`` PNG screenshot of the top of ``html`` (the viewport, not the whole page)."""
    out = Path(png).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    p = _run([f"--virtual-time-budget={budget_ms}", f"--screenshot={out}", f"--window-size={width},{height}",
              Path(html).resolve().as_uri()], timeout)
    if p.returncode != 0 or not out.is_file():
        raise RuntimeError(f"chromium --screenshot failed (exit {p.returncode}): {p.stderr[-2000:]}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="PNG screenshot of a mixerlab report with headless Chromium")
    ap.add_argument("html", help="report.html")
    ap.add_argument("png", help="where the screenshot goes")
    ap.add_argument("--size", default="1400,2400", help="window WIDTH,HEIGHT in pixels (default 1400,2400)")
    args = ap.parse_args(argv)
    w, h = (int(x) for x in args.size.split(","))
    print(screenshot(args.html, args.png, width=w, height=h))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
