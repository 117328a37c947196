"""Progress that a person can see: a tqdm bar on a terminal, a plain flushed line every few seconds otherwise.

tqdm writing to a file or a pipe (a batch job, CI, `> log`) writes its bar as one multi-kilobyte line
of carriage returns that appears only when the buffer fills; `Progress` prints
`desc: 1200/6000 img (20%), 310 img/s, ETA 15 s` lines instead and flushes each one.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

DEFAULT_EVERY_SECONDS = 5.0


def on_terminal(stream: IO | None = None) -> bool:
    stream = stream or sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Progress:
    """`update(n)` as records are done; use as a context manager or call `close()`.

    enabled=False prints nothing; enabled=None (the default) and True show a bar on a terminal
    and timed lines elsewhere.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "it", *, enabled: bool | None = True,
                 stream: IO | None = None, every: float = DEFAULT_EVERY_SECONDS, **tqdm_kwargs: Any) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream or sys.stderr
        self.enabled = enabled is not False
        self.every = float(every)
        self.n = 0
        self.postfix = ""  # appended to each line (e.g. the running loss)
        self._bar = None
        self._start = self._last = time.perf_counter()
        if self.enabled and on_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, **tqdm_kwargs)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.perf_counter()
        if self.enabled and now - self._last >= self.every:
            self._last = now
            self._line(now)

    def _line(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-9)
        rate = self.n / elapsed
        text = f"{self.desc}: {self.n}"
        if self.total:
            text += f"/{self.total} {self.unit} ({100.0 * self.n / self.total:.0f}%)"
            if rate > 0 and self.n < self.total:
                text += f", {rate:.3g} {self.unit}/s, ETA {(self.total - self.n) / rate:.0f} s"
        else:
            text += f" {self.unit}, {rate:.3g} {self.unit}/s"
        if self.postfix:
            text += f", {self.postfix}"
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self.n:
            self._line(time.perf_counter())
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
