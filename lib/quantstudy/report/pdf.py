"""``report.pdf`` next to ``report.html``: headless Chromium's print-to-PDF (the report's
print style sets A4 pages), skipped in one line when Chromium is missing or fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

PDF_FILE = "report.pdf"
PDF_TIMEOUT_S = 180
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """Headless Chromium for print-to-PDF: $QUANTSTUDY_CHROMIUM, else the first of CHROMIUM_NAMES on PATH."""
    env = os.environ.get("QUANTSTUDY_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def write_pdf(html_path: str | Path) -> str:
    """Print ``html_path`` to ``report.pdf`` beside it with headless Chromium; one line saying
    what happened. Never raises: without Chromium (or when it fails) the PDF is skipped."""
    html_path = Path(html_path)
    pdf = html_path.with_name(PDF_FILE)
    pdf.unlink(missing_ok=True)  # never leave a PDF of an older report behind
    chrome = find_chromium()
    if chrome is None:
        return f"PDF skipped: Chromium not found (install chromium to get {PDF_FILE} next to the HTML)"
    with tempfile.TemporaryDirectory(prefix="quantstudy-pdf-") as tmp:
        tmp_pdf = Path(tmp) / PDF_FILE
        cmd = [
            chrome,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-sync",
            f"--user-data-dir={tmp}",
            "--no-pdf-header-footer",
            "--print-to-pdf-no-header",
            f"--print-to-pdf={tmp_pdf}",
            html_path.as_uri(),
        ]
        try:
            subprocess.run(cmd, capture_output=True, timeout=PDF_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"PDF skipped: Chromium failed ({type(exc).__name__}: {exc})"
        if not tmp_pdf.is_file() or tmp_pdf.stat().st_size == 0:
            return f"PDF skipped: Chromium wrote no PDF ({chrome})"
        shutil.move(str(tmp_pdf), str(pdf))
    return f"pdf: {pdf}"
