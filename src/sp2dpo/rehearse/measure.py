"""One command measured: wall time and the peak resident memory of its largest process.

``python -m sp2dpo.rehearse.measure LOG -- CMD ...`` runs ``CMD`` with its output in ``LOG`` and
prints one JSON line ``{"rc", "wall_s", "peak_rss_mib"}``. It runs as a process of its own so that
the kernel's record of the largest waited-for descendant (``RUSAGE_CHILDREN``) belongs to that
command alone: for ``dvc repro -s STAGE`` that is the stage's Python process (or DVC itself, if
larger). The rehearsal calls it once per stage.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m sp2dpo.rehearse.measure LOG -- CMD ...", file=sys.stderr)
        return 2
    log, cmd = argv[0], argv[2:]
    start = time.perf_counter()
    with open(log, "ab") as out:
        rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    print(json.dumps({"rc": rc, "wall_s": round(wall, 2), "peak_rss_mib": round(peak_kib / 1024, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
