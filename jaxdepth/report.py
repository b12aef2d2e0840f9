"""The report of a method run: ``report.json``, a readable ``report.md`` table and PNG plots.

The report is the dict :func:`jaxdepth.driver.run` builds: one entry per
iteration in ``iterations`` (``unit`` — ``"site"`` or ``"block"`` —,
``units_removed``, ``units_total``, ``removed_now``, the method's scores under
``report["score_name"]`` (EASIER: ``entropies``),
``val_accuracy`` / ``test_accuracy`` in percent, ``params``, ``macs``,
``depth``) and the operating point in ``chosen``. This module only presents it:

* :func:`table`: the markdown table (also what the command line prints);
* :func:`plot_accuracy`: accuracy against units removed, the tolerance floor
  and the chosen point;
* :func:`plot_scores`: every unit's score across iterations (a heat map;
  removed units blank), saved as ``entropies.png`` for EASIER;
* :func:`write`: all of them into a directory.

Plots use matplotlib's Agg backend (no display needed); without matplotlib (the
``plots`` extra) :func:`write` writes the JSON and markdown and warns that it
skipped the plots.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import warnings
from typing import Any

from jaxdepth._optional import require

__all__ = ["table", "write", "write_json", "plot_accuracy", "plot_scores", "score_key"]

_COSTS = ("params", "macs", "depth")
_KNOWN = {"iteration", "unit", "units_removed", "units_total", "removed", "removed_now",
          "decision", "val_accuracy", "val_loss", "test_accuracy", "test_loss",
          "train_accuracy", "train_loss", "epochs", "seconds", *_COSTS}


def score_key(report: dict[str, Any]) -> str | None:
  """The name of the per-unit scores in the entries (``"entropies"`` for EASIER)."""
  if report.get("score_name"):
    return report["score_name"]
  for entry in report.get("iterations", []):
    for k, v in entry.items():
      if k not in _KNOWN and isinstance(v, dict):
        return k
  return None


def _count(n: int) -> str:
  for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if n >= size:
      return f"{n / size:.2f}{unit}"
  return str(n)


def _pct(x) -> str:
  return "–" if x is None else f"{x:.2f}"


def table(report: dict[str, Any]) -> str:
  """The report as markdown: a summary line, one row per iteration, the chosen model."""
  key = score_key(report)
  entries = report.get("iterations", [])
  lines = [f"# {report.get('method', 'method').upper()}: {report.get('model')} on "
           f"{report.get('dataset')}", ""]
  lines.append("| iter | removed | val % | test % | params | MACs | non-linear depth | "
               f"lowest of {key or 'scores'} | then removed |")
  lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|:---|")
  chosen = report.get("chosen") or {}
  for e in entries:
    scores = [v for v in (e.get(key) or {}).values() if isinstance(v, (int, float))]
    lowest = f"{min(scores):.4f}" if scores else "–"
    mark = " **←**" if chosen and e["iteration"] == chosen.get("iteration") else ""
    lines.append(
        f"| {e['iteration']} | {e['units_removed']}/{e['units_total']} | "
        f"{_pct(e['val_accuracy'])} | {_pct(e['test_accuracy'])} | {_count(e['params'])} | "
        f"{_count(e['macs'])} | {e['depth']['nonlinear_depth']} | {lowest} | "
        f"{', '.join(e.get('removed_now') or []) or '–'}{mark} |")
  lines.append("")
  if chosen:
    lines.append(
        f"**Chosen** (iteration {chosen['iteration']}, marked ←): {chosen['units_removed']} of "
        f"{chosen['units_total']} {report.get('unit', 'site')}s removed, validation {chosen['val_accuracy']:.2f} % "
        f"(dense {chosen['dense_val_accuracy']:.2f} %, tolerance {chosen['tolerance']} points), "
        f"test {chosen['test_accuracy']:.2f} % (dense {chosen['dense_test_accuracy']:.2f} %); "
        f"non-linear depth {chosen['dense_depth']['nonlinear_depth']} → "
        f"{chosen['depth']['nonlinear_depth']}. Saved in `{chosen['path']}/`.")
    merged = chosen.get("merged")
    if merged:
      lines.append("")
      lines.append(
          f"**Merged** (`{merged['path']}/`, test {merged['test_accuracy']:.2f} %): params "
          f"{_count(merged['params_before'])} → "
          f"{_count(merged['params_after'])}, MACs {_count(merged['macs_before'])} → "
          f"{_count(merged['macs_after'])}, weight depth {merged['weight_depth_before']} → "
          f"{merged['weight_depth_after']}; max abs difference {merged['max_abs_diff']:.3g}, "
          f"max rel difference {merged['max_rel_diff']:.3g} on a test batch.")
  else:
    lines.append("Not finished: no model chosen yet.")
  if report.get("note"):
    lines += ["", f"Note: {report['note']}."]
  return "\n".join(lines) + "\n"


def plots_available() -> bool:
  """Whether matplotlib (the ``plots`` extra) is installed."""
  return importlib.util.find_spec("matplotlib") is not None


def _pyplot():
  require("matplotlib", "plots", "plotting a report").use("Agg")
  return require("matplotlib.pyplot", "plots", "plotting a report")


def plot_accuracy(report: dict[str, Any], path: str | os.PathLike) -> pathlib.Path:
  """Validation and test accuracy against the number of units removed (PNG)."""
  plt = _pyplot()
  entries = report["iterations"]
  x = [e["units_removed"] for e in entries]
  fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
  ax.plot(x, [e["val_accuracy"] for e in entries], "o-", label="validation")
  ax.plot(x, [e["test_accuracy"] for e in entries], "s--", label="test")
  chosen = report.get("chosen")
  if entries:
    tol = report.get("tolerance", 0.0)
    ax.axhline(entries[0]["val_accuracy"] - tol, color="tab:green", ls=":",
               label=f"dense validation − {tol} points")
  if chosen:
    ax.plot([chosen["units_removed"]], [chosen["test_accuracy"]], "*", ms=16, color="tab:red",
            label="chosen")
  total = entries[0]["units_total"] if entries else 0
  ax.set_xticks(range(0, max(x, default=0) + 1))
  ax.set_xlabel(f"{report.get('unit', 'site')}s removed (of {total})")
  ax.set_ylabel("top-1 accuracy (%)")
  ax.set_title(f"{report.get('method', '').upper()}: {report.get('model')} on "
               f"{report.get('dataset')}")
  ax.grid(alpha=0.3)
  ax.legend(loc="best", fontsize="small")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return pathlib.Path(path)


def plot_scores(report: dict[str, Any], path: str | os.PathLike) -> pathlib.Path | None:
  """Each unit's numeric score across iterations as a heat map (PNG); ``None`` without scores."""
  key = score_key(report)
  entries = report["iterations"]
  if key is None or not entries:
    return None
  plt = _pyplot()
  sites: list[str] = []
  for e in entries:
    sites += [s for s, v in e[key].items() if s not in sites and isinstance(v, (int, float))]
  if not sites:
    return None
  grid = [[e[key].get(s, math.nan) for e in entries] for s in sites]
  fig, ax = plt.subplots(figsize=(max(4.0, 1.0 + 0.45 * len(entries)),
                                  max(2.5, 0.8 + 0.28 * len(sites))), dpi=120)
  image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
  for i, e in enumerate(entries):  # mark what each iteration removed
    for s in e.get("removed_now") or []:
      ax.plot(i, sites.index(s), "x", color="red", ms=8)
  ax.set_yticks(range(len(sites)), sites, fontsize="small")
  ax.set_xticks(range(len(entries)), [str(e["iteration"]) for e in entries])
  ax.set_xlabel("iteration (x: removed after it)")
  ax.set_title(f"{key} per {report.get('unit', 'site')}")
  fig.colorbar(image, ax=ax, label=key)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return pathlib.Path(path)


def write_json(directory: str | os.PathLike, report: dict[str, Any]) -> pathlib.Path:
  """Writes ``directory/report.json`` atomically."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  tmp = directory / "report.json.tmp"
  tmp.write_text(json.dumps(report, indent=1))
  tmp.replace(directory / "report.json")
  return directory / "report.json"


def write(directory: str | os.PathLike, report: dict[str, Any]) -> dict[str, pathlib.Path]:
  """Writes ``report.json``, ``report.md``, ``accuracy.png`` and ``<scores>.png`` (``entropies.png``).

  Returns:
    ``{kind: path}`` of the files written.
  """
  directory = pathlib.Path(directory)
  out = {"json": write_json(directory, report)}
  (directory / "report.md").write_text(table(report))
  out["markdown"] = directory / "report.md"
  if report.get("iterations") and not plots_available():
    warnings.warn(f"report: no plots in {directory} (matplotlib is not installed; "
                  "pip install 'jaxdepth[plots]' to get them); report.json and report.md are written",
                  stacklevel=2)
  elif report.get("iterations"):
    out["accuracy_plot"] = plot_accuracy(report, directory / "accuracy.png")
    scores = plot_scores(report, directory / f"{score_key(report)}.png")
    if scores is not None:
      out["scores_plot"] = scores
  return out
