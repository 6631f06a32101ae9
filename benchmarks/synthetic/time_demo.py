"""Time the demo (`fastrobust train`, no arguments) from a cold start: empty benchmark cache, new output.

Reports wall time, the process's CPU time (user + sys of the child, all threads) and the machine's
load average before and after, so that a measurement on a shared machine can be judged: with
``--threads 1`` the CPU time is the wall time the demo would take alone on one idle core (a busy
machine inflates it only a little, through shared caches), and with 2 idle cores it runs at least
as fast with ``--threads 1``::

    python benchmarks/synthetic/time_demo.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the demo process")
    ap.add_argument("extra", nargs="*", help="extra `fastrobust train` arguments")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="demo-time-") as tmp:
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
        cmd = [
            sys.executable, "-m", "fastrobust", "train",
            "--set", f"output.dir={tmp}/out", "--set", f"task.synthetic.cache_dir={tmp}/cache", *args.extra,
        ]  # fmt: skip
        load0 = os.getloadavg()
        t0 = time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall = time.perf_counter() - t0
        load1 = os.getloadavg()
        if proc.returncode != 0:
            sys.exit(proc.stderr[-3000:])
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        out = proc.stdout
        print(out[out.find("XLT accuracy") :] if "XLT accuracy" in out else out[-4000:])
        print(
            f"\ndemo with OMP_NUM_THREADS={args.threads}: wall {wall:.0f} s, CPU (user+sys) {cpu:.0f} s; "
            f"load average before {load0[0]:.2f}, after {load1[0]:.2f} (1 min); {os.cpu_count()} CPUs"
        )


if __name__ == "__main__":
    main()
