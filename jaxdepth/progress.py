"""Progress bars and the JSON-lines metrics log of a run.

Only process 0 of a multi-host run shows a bar or writes the log.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import sys
from typing import Any

import jax
from tqdm.auto import tqdm

__all__ = ["MetricsLog", "progress_bar", "read_metrics"]


def progress_bar(*, total: int, initial: int = 0, desc: str = "", enabled: bool = True,
                 unit: str = "step") -> tqdm:
  """A tqdm bar with rate and ETA, silent on processes other than 0 or when disabled."""
  return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
              disable=not enabled or jax.process_index() != 0, file=sys.stderr,
              mininterval=0.5)


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
    truncate_after_step: on opening, drop records whose ``step`` is larger: the
      log of a resumed run then holds each step once, as if never interrupted.
  """

  def __init__(self, path: str | os.PathLike, *, truncate_after_step: int | None = None):
    self.path = pathlib.Path(path)
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if truncate_after_step is not None and self.path.exists():
      kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= truncate_after_step]
      tmp = self.path.with_suffix(".tmp")
      tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
      tmp.replace(self.path)

  def write(self, record: dict[str, Any]) -> None:
    if not self.enabled:
      return
    with self.path.open("a") as f:
      f.write(json.dumps(_jsonable(record)) + "\n")
