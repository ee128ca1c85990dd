"""`make bench`: every CPU benchmark, one after another, each printing the peer's figure beside ours.

    python benchmarks/run_all.py [--quick]

Each benchmark is its own script (run them alone for more options); this only sequences them so one
command reproduces docs/performance.md. GPU benchmarks are separate (`make bench-gpu`, on a GPU machine).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

BENCHES: list[tuple[str, list[str], list[str]]] = [
    # (script, full args, quick args)
    ("bench_matmul_cpu.py", ["--sizes", "256", "512", "1024", "2048"], ["--sizes", "256", "1024", "--repeat", "3"]),
    ("bench_models_cpu.py", [], ["--runs", "10"]),
    ("bench_models_cpu.py", ["--models", "gpt_block", "resnext", "--tune", "128"],
     ["--models", "gpt_block", "--tune", "8", "--runs", "10"]),
    ("bench_tune.py", [], ["--quick"]),
    ("bench_ann.py", [], []),
    ("bench_light.py", [], ["--models", "shufflenet", "squeezenet", "--runs", "3"]),
    ("bench_cnn_cpu.py", [], ["--models", "squeezenet1_1", "mobilenet_v3_small", "--batch", "1", "--runs", "3"]),
]


def main() -> int:
    quick = "--quick" in sys.argv
    failed = []
    for script, full, short in BENCHES:
        path = HERE / script
        if not path.exists():
            continue
        print(f"\n=== {script} {' '.join(short if quick else full)}", flush=True)
        r = subprocess.run([sys.executable, str(path), *(short if quick else full)])
        if r.returncode != 0:
            failed.append(script)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
