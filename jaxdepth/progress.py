"""Progress bars and the JSON-lines metrics log of a run.

On a terminal, progress is a tqdm bar redrawn in place. When standard error is
not a terminal (a log file, a pipe, a batch job), carriage-return redraws would
pile up, so progress is instead one plain line each time the caller reports a
milestone (``set_postfix`` with ``refresh=True``; :func:`jaxdepth.training.fit`
does so once per epoch). Only process 0 of a multi-host run shows progress or
writes the log.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import sys
import time
from typing import Any

import jax
# The terminal bar: a bar is drawn only on a terminal (progress_bar), and tqdm.auto would
# warn on import in a notebook without ipywidgets.
from tqdm import tqdm

__all__ = ["MetricsLog", "LineProgress", "progress_bar", "read_metrics"]


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


class LineProgress:
  """Progress as whole lines, for output that is not a terminal.

  The interface is the part of tqdm's that the loops use: :meth:`update`
  counts, :meth:`set_postfix` with ``refresh=True`` prints one line
  (``desc: step n/total (p %), elapsed, ETA | key=value ...``), with
  ``refresh=False`` it only remembers the values; :meth:`close` prints nothing.

  Args:
    total: the number of units of the whole run.
    initial: units already done (a resumed run); the rate counts only new ones.
    desc: the label at the start of each line.
    unit: the unit's name.
    file: where lines go (default: standard error).
  """

  def __init__(self, *, total: int, initial: int = 0, desc: str = "", unit: str = "step",
               file=None):
    self.total, self.n, self.desc, self.unit = total, initial, desc, unit
    self.file = file
    self._start_n = initial
    self._start = time.perf_counter()

  def update(self, n: int = 1) -> None:
    self.n += n

  def line(self, postfix: dict[str, Any]) -> str:
    elapsed = time.perf_counter() - self._start
    done = self.n - self._start_n
    eta = (self.total - self.n) * elapsed / done if done > 0 else None
    pct = 100.0 * self.n / self.total if self.total else 100.0
    head = f"{self.desc}: " if self.desc else ""
    text = (f"{head}{self.unit} {self.n}/{self.total} ({pct:.0f} %), {_duration(elapsed)} "
            f"elapsed, ETA {_duration(eta) if eta is not None else '?'}")
    if postfix:
      text += " | " + " ".join(f"{k}={v}" for k, v in postfix.items())
    return text

  def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
    if refresh:
      print(self.line({**(ordered_dict or {}), **kwargs}), file=self.file or sys.stderr,
            flush=True)

  def close(self) -> None:
    pass


class _Silent:
  """The progress of a disabled bar or of a process other than 0."""

  def update(self, n: int = 1) -> None:
    pass

  def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
    pass

  def close(self) -> None:
    pass


def _interactive(stream) -> bool:
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError):
    return False


def progress_bar(*, total: int, initial: int = 0, desc: str = "", enabled: bool = True,
                 unit: str = "step"):
  """Progress of a loop: a tqdm bar with rate and ETA on a terminal, else a :class:`LineProgress`.

  Silent on processes other than 0 or when ``enabled`` is False.
  """
  if not enabled or jax.process_index() != 0:
    return _Silent()
  if not _interactive(sys.stderr):
    return LineProgress(total=total, initial=initial, desc=desc, unit=unit)
  return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
              file=sys.stderr, mininterval=0.5)


def _jsonable(value):
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN; keep it readable
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if hasattr(value, "item"):
    return _jsonable(value.item())
  return value


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
  """The records of a ``metrics.jsonl`` file (an empty list if there is none)."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLog:
  """Appends one JSON object per line to ``path`` (``metrics.jsonl``).

  Args:
    path: the log file (its directory is created).
    records: when given, what the file holds on opening, in place of what it
      held (atomically): a resumed run's history as its checkpoint saved it. The
      log then holds each epoch once, as if never interrupted, whether the run
      stopped before a line's checkpoint completed, after it but before the line,
      or in the middle of writing a line.
  """

  def __init__(self, path: str | os.PathLike, *, records: list[dict[str, Any]] | None = None):
    self.path = pathlib.Path(path)
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if records is not None:
      tmp = self.path.with_suffix(".tmp")
      tmp.write_text("".join(json.dumps(_jsonable(r)) + "\n" for r in records))
      tmp.replace(self.path)

  def write(self, record: dict[str, Any]) -> None:
    if not self.enabled:
      return
    with self.path.open("a") as f:
      f.write(json.dumps(_jsonable(record)) + "\n")
