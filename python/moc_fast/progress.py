"""Progress reporting: a tqdm bar on a terminal, a few plain lines elsewhere.

Written to a log file, a tqdm bar is thousands of carriage-return frames; when stderr is not a
terminal, `Progress` prints a readable line at most every tenth of the work (and at the end).
"""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """`update(n, **stats)` / `close()`; `enabled=False` prints nothing. `plain=False` drops
    the plain lines too (for inner bars that are only useful live on a terminal)."""

    def __init__(self, total: int, desc: str, enabled: bool = True, plain: bool = True) -> None:
        self.total, self.desc, self.n = max(int(total), 0), desc, 0
        self._bar: Any = None
        self._plain = False
        self._stats: dict[str, Any] = {}
        if not enabled:
            return
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=desc, leave=False)
        elif plain:
            self._plain, self._start, self._next, self._shown = True, time.perf_counter(), 0, -1

    def update(self, n: int = 1, **stats: Any) -> None:
        self.n += n
        self._stats.update(stats)
        if self._bar is not None:
            self._bar.update(n)
            if stats:
                self._bar.set_postfix(stats)
        elif self._plain and (self.n >= self._next or self.n >= self.total):
            self._line()
            self._next = self.n + max(1, self.total // 10)

    def _line(self) -> None:
        self._shown = self.n
        stats = "".join(f", {k} {v}" for k, v in self._stats.items())
        elapsed = time.perf_counter() - self._start
        print(f"{self.desc}: {self.n}/{self.total}{stats} ({elapsed:.0f} s)", file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._plain and self.n != self._shown:
            self._line()  # stopped early (e.g. early stopping): say where
        self._bar, self._plain = None, False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
