"""Wall time of ``unlearn-audit demo`` with a warm organism cache, per stage.

Runs the demo once (the default methods and attacks, or ``--methods``/``--attacks``) in a
subprocess and prints its stage timings from results.json.

    .venv/bin/python benchmarks/bench_demo.py [--methods all] [--attacks all]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = str(Path(sys.executable).parent / "unlearn-audit")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default=None)
    ap.add_argument("--attacks", default=None)
    args = ap.parse_args()
    extra = [*(["--methods", args.methods] if args.methods else []), *(["--attacks", args.attacks] if args.attacks else [])]
    subprocess.run([CLI, "organism", "train", "--json"], capture_output=True, check=True)  # warm the cache
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([CLI, "demo", "--out", tmp, "--json", *extra], capture_output=True, check=True,
                       env={**os.environ, "UNLEARN_AUDIT_PROGRESS": "0"})
        wall = time.perf_counter() - start
        results = json.loads((Path(tmp) / "results.json").read_text())
    timings = results["timings_s"]
    methods = results.get("demo", {}).get("methods", list(results["methods"]))
    print(f"## Demo wall time (warm organism cache): {wall:.0f} s for {len(methods)} methods "
          f"({', '.join(methods)}), attacks {', '.join(results.get('demo', {}).get('attacks', []))}\n")
    print("| stage | seconds |")
    print("|---|---|")
    unlearn = sum(v for k, v in timings.items() if k.startswith("unlearn:"))
    print(f"| unlearning (all methods) | {unlearn:.1f} |")
    for k, v in timings.items():
        if not k.startswith("unlearn:") and k != "total":
            print(f"| {k} | {v:.1f} |")
    print(f"| total (in process) | {timings.get('total', float('nan')):.1f} |")


if __name__ == "__main__":
    main()
