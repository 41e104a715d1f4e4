"""Run by tests/test_sources.py in a fresh process: fit and encode a `.npy` file that is not
in the page cache, and report resident memory (peak and before the fit) as JSON."""

from __future__ import annotations

import json
import os
import sys
import threading
import time


def peak_rss() -> int:
    """Peak resident bytes of this process image (VmHWM; ru_maxrss would include the memory
    of the parent process this one was forked from before exec)."""
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def mapped_bytes(path: str) -> int:
    """Resident bytes of `path`'s pages mapped into this process (from /proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):  # a mapping's header line
                inside = line.rstrip().endswith(path)
            elif inside and first == "Rss:":
                total += int(line.split()[1]) * 1024
    return total


def main(path: str, how: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # read from disk, not the page cache
    os.close(fd)
    import numpy as np
    import torch

    import moc_fast as mf

    torch.set_num_threads(1)
    X = path if how == "path" else np.load(path, mmap_mode="r")
    idx = mf.MoCIndexer(3, 64, latent_dim=16, hidden=(128,), seed=0)
    idx.build(384)
    before = peak_rss()
    most_mapped, done = [0], threading.Event()

    def watch() -> None:  # the most of the file ever resident through a mapping
        while not done.is_set():
            most_mapped[0] = max(most_mapped[0], mapped_bytes(os.path.realpath(path)))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    idx.fit(X, epochs=1, batch_size=1024, progress=False, device="cpu")
    fitted = peak_rss()
    codes = idx.encode(X)
    peak = peak_rss()
    done.set()
    watcher.join()
    print(json.dumps({"before": before, "fit": fitted, "peak": peak, "rows": len(codes),
                      "mapped": most_mapped[0]}))  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
