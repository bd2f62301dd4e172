"""Run every benchmark and append its figures, with the machine and the date, to BENCHMARKS.md.

    make bench                      # all of them (tens of minutes on 2 cores)
    .venv/bin/python benchmarks/run_all.py --only steps,patching

Each benchmark prints Markdown; this script prints it too and appends it under a
"Run <date>" heading at the end of BENCHMARKS.md. The organism sweep
(``benchmarks/sweep_methods.py``) is separate: it takes hours and resumes from its JSONL.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = {
    "steps": [str(HERE / "bench_steps.py")],
    "compile": [str(HERE / "bench_compile.py")],
    "patching": [str(HERE / "bench_patching.py")],
    "demo": [str(HERE / "bench_demo.py")],
    "memory": [str(HERE / "bench_memory.py")],
    "memory-lora": [str(HERE / "bench_memory.py"), "--lora", "8"],
    "precision": [str(HERE / "bench_precision.py")],
    "cluster": [str(HERE / "bench_cluster.py")],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=",".join(BENCHES), help="comma list of: " + ", ".join(BENCHES))
    ap.add_argument("--no-append", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = ap.parse_args()
    chunks = []
    for name in args.only.split(","):
        if name not in BENCHES:
            sys.exit(f"error: unknown benchmark {name!r}; choose from {', '.join(BENCHES)}")
        print(f"running {name} ...", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, *BENCHES[name]], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"error: benchmark {name} failed:\n{out.stderr[-2000:]}")
        print(out.stdout)
        chunks.append(out.stdout.strip())
    if not args.no_append:
        with (HERE.parent / "BENCHMARKS.md").open("a", encoding="utf-8") as f:
            f.write(f"\n\n## Run {time.strftime('%Y-%m-%d %H:%M')} (`make bench`)\n\n" + "\n\n".join(chunks) + "\n")


if __name__ == "__main__":
    main()
