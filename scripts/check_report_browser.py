"""Render a run's report.html in headless Chromium and check it: no console messages, nothing
loaded from the network, and a screenshot that is not blank.

    python scripts/check_report_browser.py RUN_DIR_OR_REPORT [--png shot.png]

Needs the Debian ``chromium`` package (``apt-get install chromium``). Prints one JSON document
(the checks, the screenshot path, the seconds it took) and exits 1 when a check fails. The
``slow`` test in tests/test_report.py runs it; it skips where Chromium is not installed.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
CONSOLE = re.compile(r":CONSOLE[:(]")
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?\s*(?:https?:)?//""", re.I)


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def check(report: Path, png: Path, browser: str | None = None, width: int = 1280, height: int = 2400) -> dict:
    """Screenshot ``report`` with ``browser`` into ``png``; return the checks as a dict."""
    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium found; install the Debian chromium package")
    report, png = Path(report).resolve(), Path(png).resolve()
    png.unlink(missing_ok=True)
    start = time.perf_counter()
    proc = subprocess.run(
        [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--host-resolver-rules=MAP * ~NOTFOUND",  # the page must not need the network
         f"--window-size={width},{height}", "--enable-logging=stderr", "--v=0",
         f"--screenshot={png}", report.as_uri()],
        capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - start
    console = [line for line in proc.stderr.splitlines() if CONSOLE.search(line)]
    html = report.read_text(encoding="utf-8")
    external = EXTERNAL.findall(html)
    blank = None
    if png.is_file():
        import matplotlib.image

        pixels = matplotlib.image.imread(png)          # (H, W, C) floats in [0, 1]
        blank = float(pixels[..., :3].std()) < 0.01
    result = {"report": str(report), "screenshot": str(png), "seconds": round(seconds, 2),
              "exit_code": proc.returncode, "console_messages": console, "external_references": external,
              "screenshot_written": png.is_file(), "blank": blank}
    result["ok"] = (proc.returncode == 0 and not console and not external and png.is_file() and blank is False)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path, help="a run directory or its report.html")
    ap.add_argument("--png", type=Path, default=None, help="screenshot path (default: next to the report)")
    args = ap.parse_args()
    report = args.report / "report.html" if args.report.is_dir() else args.report
    result = check(report, args.png or report.with_name("report-screenshot.png"))
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
