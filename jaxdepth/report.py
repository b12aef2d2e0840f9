"""The report of a method run: ``report.json``, a readable ``report.md`` and PNG plots.

The report is the dict :func:`jaxdepth.driver.run` builds: one entry per
iteration in ``iterations`` (``unit`` — ``"site"`` or ``"block"`` —,
``units_removed``, ``units_total``, ``removed_now``, the method's scores under
``report["score_name"]`` (EASIER: ``entropies``, in ``report["score_unit"]``,
bits), ``val_accuracy`` / ``test_accuracy`` as fractions in [0, 1],
``params``, ``macs``, ``depth``, and ``merged``: the costs of that
iteration's network once collapsed by exact surgery) and the operating point
in ``chosen`` (with ``chosen["merged"]``: the surgery edits made, the merges
skipped with their reasons, and latencies). This module only presents it;
text and plots show accuracies in percent. A unit's score is a number,
or a JSON object whose first numeric field is the number shown (EGP: the
entropy, beside its layer's weight counts):

* :func:`table`: the markdown report (also what the command line prints);
* :func:`plot_accuracy`: accuracy against units removed, the tolerance floor
  and the chosen point on the validation curve it was chosen on;
* :func:`plot_costs`: accuracy against MACs, non-linear depth and weight
  depth of the merged networks;
* :func:`plot_scores`: every unit's score across iterations (a heat map;
  removed units blank, signed scores centred on 0), saved as ``<score_name>.png``
  (``entropies.png`` for EASIER, ``loss_gaps.png`` for TLC);
* :func:`plot_training`: per-epoch loss and accuracy of every iteration (from
  its ``metrics.jsonl``, :func:`read_histories`);
* :func:`plot_unit_bars`: several numbers per unit side by side (e.g. LaCoOT's
  sliced and max-sliced distance of every block);
* :func:`write`: all of them into a directory.

Plots use matplotlib's Agg backend (no display needed; a program that imported
pyplot before, e.g. a notebook, keeps its own); without matplotlib (the
``plots`` extra) :func:`write` writes the JSON and markdown and warns that it
skipped the plots.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import sys
import warnings
from typing import Any

from jaxdepth._optional import require

__all__ = ["table", "write", "write_json", "json_safe", "plot_accuracy", "plot_costs",
           "plot_scores", "plot_training", "plot_unit_bars", "read_histories", "score_key",
           "score_value", "without_timings", "display_name"]

_COSTS = ("params", "macs", "depth", "merged")
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


def _score_label(report: dict[str, Any]) -> str:
  key = score_key(report) or "score"
  unit = report.get("score_unit")
  return f"{key} ({unit})" if unit else key


def score_value(score):
  """The number a unit's score stands for: itself, or an object's first numeric field."""
  if isinstance(score, dict):
    score = next((v for v in score.values() if isinstance(v, (int, float))
                  and not isinstance(v, bool)), None)
  return score if isinstance(score, (int, float)) and not isinstance(score, bool) else None


def _count(n: int) -> str:
  for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if n >= size:
      return f"{n / size:.2f}{unit}"
  return str(n)


def _pct(x) -> str:
  """A fraction in [0, 1] as a percent with two decimals."""
  return "–" if x is None else f"{100 * x:.2f}"


# How a method's name is written in titles, where it is not all capitals.
_DISPLAY_NAMES = {"lacoot": "LaCoOT"}


def display_name(method: str) -> str:
  """A method's name as titles write it: ``"LaCoOT"`` for ``"lacoot"``, else in capitals."""
  return _DISPLAY_NAMES.get(method, method.upper())


def _merged(entry: dict[str, Any], key: str):
  """A figure of the entry's merged network, falling back to the unmerged one."""
  merged = entry.get("merged") or {}
  if key in merged:
    return merged[key]
  return entry["macs"] if key == "macs" else entry["depth"][key]


def table(report: dict[str, Any]) -> str:
  """The report as markdown: one row per iteration, the chosen model, what surgery did."""
  key = score_key(report)
  entries = report.get("iterations", [])
  unit = report.get("unit", "site")
  lines = [f"# {display_name(report.get('method', 'method'))}: {report.get('model')} on "
           f"{report.get('dataset')}", ""]
  lines.append(f"| iter | removed | val % | test % | params | MACs (merged) | non-linear depth | "
               f"weight depth (merged) | lowest of {_score_label(report)} | then removed |")
  lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---|")
  chosen = report.get("chosen") or {}
  for e in entries:
    scores = [v for v in map(score_value, (e.get(key) or {}).values()) if v is not None]
    lowest = f"{min(scores):.4f}" if scores else "–"
    mark = " **←**" if chosen and e["iteration"] == chosen.get("iteration") else ""
    lines.append(
        f"| {e['iteration']} | {e['units_removed']}/{e['units_total']} | "
        f"{_pct(e['val_accuracy'])} | {_pct(e['test_accuracy'])} | {_count(e['params'])} | "
        f"{_count(_merged(e, 'macs'))} | {e['depth']['nonlinear_depth']} | "
        f"{_merged(e, 'weight_depth')} | {lowest} | "
        f"{', '.join(e.get('removed_now') or []) or '–'}{mark} |")
  lines.append("")
  if chosen:
    lines.append(
        f"**Chosen** (iteration {chosen['iteration']}, marked ←): {chosen['units_removed']} of "
        f"{chosen['units_total']} {unit}s removed, validation {_pct(chosen['val_accuracy'])} % "
        f"(dense {_pct(chosen['dense_val_accuracy'])} %, tolerance "
        f"{chosen.get('tolerance_points', chosen.get('tolerance'))} points), test {_pct(chosen['test_accuracy'])} % (dense "
        f"{_pct(chosen['dense_test_accuracy'])} %); non-linear depth "
        f"{chosen['dense_depth']['nonlinear_depth']} → {chosen['depth']['nonlinear_depth']}. "
        f"Saved in `{chosen['path']}/`.")
    merged = chosen.get("merged")
    if merged:
      lines += ["", *_merged_lines(merged)]
  else:
    lines.append("Not finished: no model chosen yet.")
  if report.get("dtype") not in (None, "float32"):
    lines += ["", f"Accuracies are measured in {report['dtype']} on the network as trained (its "
                  f"removed units gated off or masked). The saved models, whose removed units "
                  f"are gone, sum over fewer terms and may round to slightly other {report['dtype']} "
                  f"accuracies; in float32 they give the same."]
  if report.get("note"):
    lines += ["", f"Note: {report['note']}."]
  return "\n".join(lines) + "\n"


def _g(value) -> str:
  """A difference in 3 significant digits; ``n/a`` where none was measured (``null``)."""
  return "n/a" if value is None else f"{value:.3g}"


def _merged_lines(merged: dict[str, Any]) -> list[str]:
  """The surgery paragraph: costs, equivalence, latency, edits made and merges skipped."""
  lines = [
      f"**Merged** (`{merged['path']}/`, {merged['mode']} surgery, test "
      f"{_pct(merged['test_accuracy'])} %): params {_count(merged['params_before'])} → "
      f"{_count(merged['params_after'])}, MACs {_count(merged['macs_before'])} → "
      f"{_count(merged['macs_after'])}, weight depth {merged['weight_depth_before']} → "
      f"{merged['weight_depth_after']} (chosen → merged); max abs difference "
      f"{_g(merged['max_abs_diff'])}, "
      f"max rel difference {_g(merged['max_rel_diff'])} on a test batch (in float32)."]
  latency = merged.get("latency") or []
  if latency:
    names = [k[:-3] for k in latency[0] if k.endswith("_ms")]
    lines += ["", "| eval latency (ms, median) | " + " | ".join(names) + " |",
              "|---:|" + "---:|" * len(names)]
    for row in latency:
      lines.append(f"| batch {row['batch']} | " +
                   " | ".join(f"{row[n + '_ms']:.3f}" for n in names) + " |")
  edits = merged.get("edits")
  if isinstance(edits, list):
    lines += ["", f"Surgery edits ({len(edits)}):"]
    lines += [f"- {e['kind']} `{e['path']}`: {e['detail']}" +
              ("" if e.get("exact", True) else " (not exact at the border)") for e in edits]
  skipped = merged.get("skipped")
  if isinstance(skipped, list):
    lines += ["", f"Merges skipped ({len(skipped)}):" if skipped else "Merges skipped: none."]
    lines += [f"- {s['detail']}: {s['reason']}" for s in skipped]
  return lines


def plots_available() -> bool:
  """Whether matplotlib (the ``plots`` extra) is installed."""
  return importlib.util.find_spec("matplotlib") is not None


def _pyplot():
  """pyplot, on the Agg backend unless the program imported pyplot first.

  A program that already uses pyplot keeps its backend (a notebook's inline
  one, a window): switching it to Agg would stop that program's own figures
  from showing. The report's figures are closed once saved, so they never show.
  """
  matplotlib = require("matplotlib", "plots", "plotting a report")
  if "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")
  return require("matplotlib.pyplot", "plots", "plotting a report")


def _integer_ticks():
  """Integer ticks only, even on an axis whose range holds one integer (a constant depth)."""
  from matplotlib.ticker import MaxNLocator  # pylint: disable=import-outside-toplevel
  return MaxNLocator(integer=True, min_n_ticks=1)


def _short_count(v: float, _pos=None) -> str:
  """A tick label of a count in k/M/G (600000 -> 600k, 1250000 -> 1.25M)."""
  for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(v) >= size:
      return f"{v / size:.4g}{unit}"
  return f"{v:.4g}"


def _count_ticks():
  from matplotlib.ticker import FuncFormatter  # pylint: disable=import-outside-toplevel
  return FuncFormatter(_short_count)


def _title(report: dict[str, Any]) -> str:
  return (f"{display_name(report.get('method', ''))}: {report.get('model')} on "
          f"{report.get('dataset')}")


def _chosen_entry(report: dict[str, Any]) -> dict[str, Any] | None:
  chosen = report.get("chosen")
  if not chosen:
    return None
  return next((e for e in report["iterations"] if e["iteration"] == chosen["iteration"]), None)


def _save(fig, path) -> pathlib.Path:
  fig.tight_layout()
  fig.savefig(path)
  _pyplot().close(fig)
  return pathlib.Path(path)


def plot_accuracy(report: dict[str, Any], path: str | os.PathLike) -> pathlib.Path:
  """Validation and test accuracy (%) against the number of units removed (PNG).

  The dotted line is the floor the operating point was chosen against (dense
  validation accuracy minus the tolerance); the star marks the chosen point
  on the validation curve.
  """
  return _save(_accuracy_figure(report), path)


def _accuracy_figure(report):
  plt = _pyplot()
  entries = report["iterations"]
  x = [e["units_removed"] for e in entries]
  fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
  ax.plot(x, [100 * e["val_accuracy"] for e in entries], "o-", label="validation")
  ax.plot(x, [100 * e["test_accuracy"] for e in entries], "s--", label="test")
  if entries:
    tol = report.get("tolerance_points", 0.0)
    ax.axhline(100 * entries[0]["val_accuracy"] - tol, color="tab:green", ls=":",
               label=f"dense validation − {tol} points")
  chosen = _chosen_entry(report)
  if chosen:
    ax.plot([chosen["units_removed"]], [100 * chosen["val_accuracy"]], "*", ms=16,
            color="tab:red", label="chosen (on validation)")
  total = entries[0]["units_total"] if entries else 0
  ax.set_xticks(range(0, max(x, default=0) + 1))
  ax.set_xlabel(f"{report.get('unit', 'site')}s removed (of {total})")
  ax.set_ylabel("top-1 accuracy (%)")
  ax.set_title(_title(report))
  ax.grid(alpha=0.3)
  ax.legend(loc="best", fontsize="small")
  return fig


def plot_costs(report: dict[str, Any], path: str | os.PathLike) -> pathlib.Path:
  """Accuracy (%) against the real cost of each iteration's network (PNG).

  Three panels: multiply-accumulates per example, non-linear depth and weight
  depth, of the network once collapsed by exact surgery (``entry["merged"]``;
  the unmerged figures where surgery was not run). Each point is an
  iteration, labelled with the units removed; the star is the chosen one.
  """
  return _save(_costs_figure(report), path)


def _costs_figure(report):
  plt = _pyplot()
  entries = report["iterations"]
  chosen = _chosen_entry(report)
  panels = (("macs", "MACs per example (merged network)"),
            ("nonlinear_depth", "non-linear depth (layers)"),
            ("weight_depth", "weight depth (layers, merged network)"))
  fig, axes = plt.subplots(1, 3, figsize=(13.0, 4.0), dpi=120, sharey=True)
  for ax, (key, label) in zip(axes, panels):
    xs = [_merged(e, key) for e in entries]
    ax.plot(xs, [100 * e["val_accuracy"] for e in entries], "o-", label="validation")
    ax.plot(xs, [100 * e["test_accuracy"] for e in entries], "s--", label="test")
    for e, xv in zip(entries, xs):
      ax.annotate(str(e["units_removed"]), (xv, 100 * e["val_accuracy"]),
                  textcoords="offset points", xytext=(4, 4), fontsize="x-small")
    if chosen:
      ax.plot([_merged(chosen, key)], [100 * chosen["val_accuracy"]], "*", ms=14,
              color="tab:red", label="chosen (on validation)")
    ax.set_xlabel(label)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    if key == "macs":
      ax.xaxis.set_major_formatter(_count_ticks())
    else:
      ax.xaxis.set_major_locator(_integer_ticks())
  axes[0].legend(loc="best", fontsize="small")
  fig.suptitle(f"{_title(report)}: accuracy against cost "
               f"(labels: {report.get('unit', 'site')}s removed)")
  return fig


def plot_scores(report: dict[str, Any], path: str | os.PathLike) -> pathlib.Path | None:
  """Each unit's numeric score across iterations as a heat map (PNG); ``None`` without scores."""
  fig = _scores_figure(report)
  return None if fig is None else _save(fig, path)


def _scores_figure(report):
  key = score_key(report)
  entries = report["iterations"]
  if key is None or not entries:
    return None
  plt = _pyplot()
  sites: list[str] = []
  for e in entries:
    sites += [s for s, v in e[key].items() if s not in sites and score_value(v) is not None]
  if not sites:
    return None
  grid = [[math.nan if score_value(e[key].get(s)) is None else score_value(e[key][s])
           for e in entries] for s in sites]
  fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + 0.45 * len(entries)),
                                  max(2.5, 0.8 + 0.28 * len(sites))), dpi=120)
  finite = [v for row in grid for v in row if not math.isnan(v)]
  signed = min(finite) < 0 < max(finite)   # TLC's loss gaps: 0 is the middle colour
  bound = max(abs(v) for v in finite)
  image = ax.imshow(grid, aspect="auto", cmap="coolwarm" if signed else "viridis",
                    vmin=-bound if signed else None, vmax=bound if signed else None,
                    interpolation="nearest")
  for i, e in enumerate(entries):  # mark what each iteration removed (or chose, by score name)
    marked = [*(e.get("removed_now") or []), *((e.get("decision") or {}).get("chosen") or [])]
    for row in sorted({sites.index(s) for s in marked if s in sites}):
      ax.plot(i, row, "x", color="black" if signed else "red", ms=8)
  ax.set_yticks(range(len(sites)), sites, fontsize="small")
  ax.set_ylabel(f"{report.get('unit', 'site')} (call order)")
  ax.set_xticks(range(len(entries)), [str(e["iteration"]) for e in entries])
  ax.set_xlabel("iteration (x: removed after it; blank: removed before)")
  ax.set_title(f"{key} per {report.get('unit', 'site')}")
  fig.colorbar(image, ax=ax, label=_score_label(report))
  return fig


def read_histories(directory: str | os.PathLike) -> dict[int, list[dict[str, Any]]]:
  """``{iteration: [per-epoch record]}`` from ``directory/iterations/NNN/metrics.jsonl``."""
  out = {}
  for path in sorted(pathlib.Path(directory).glob("iterations/[0-9][0-9][0-9]/metrics.jsonl")):
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if records:
      out[int(path.parent.name)] = records
  return out


def plot_training(report: dict[str, Any], histories: dict[int, list[dict[str, Any]]],
                  path: str | os.PathLike) -> pathlib.Path | None:
  """Per-epoch training curves of every iteration (PNG); ``None`` without any.

  Left: training loss (the cross-entropy, mean over the epoch's steps). Right: validation
  accuracy (solid) and training accuracy (dashed, train mode, over the epoch) in %, the two
  styles named in its legend. One colour per iteration.
  """
  fig = _training_figure(report, histories)
  return None if fig is None else _save(fig, path)


def _training_figure(report, histories):
  if not histories:
    return None
  plt = _pyplot()
  removed = {e["iteration"]: e["units_removed"] for e in report.get("iterations", [])}
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11.0, 4.0), dpi=120)
  cmap = plt.get_cmap("viridis")
  last = max(histories)
  for it, records in sorted(histories.items()):
    color = cmap(it / max(1, last))
    label = f"iteration {it}" + (f" ({removed[it]} removed)" if it in removed else "")
    epochs = [r["epoch"] for r in records]
    ax_loss.plot(epochs, [r["train_loss"] for r in records], "-", color=color, label=label)
    ax_acc.plot(epochs, [100 * r["train_accuracy"] for r in records], "--", color=color)
    val = [(r["epoch"], 100 * r["val_accuracy"]) for r in records if "val_accuracy" in r]
    if val:
      ax_acc.plot(*zip(*val), "-", color=color, label=label)
  ax_loss.set_xlabel("epoch of the iteration")
  ax_loss.set_ylabel("training loss (cross-entropy, nats)")
  ax_loss.set_yscale("log")
  ax_acc.set_xlabel("epoch of the iteration")
  ax_acc.set_ylabel("top-1 accuracy (%)")
  for ax in (ax_loss, ax_acc):
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(_integer_ticks())
  ax_loss.legend(loc="best", fontsize="x-small")
  # The line styles, said in a legend (a y-label saying it ran into the title).
  from matplotlib.lines import Line2D  # pylint: disable=import-outside-toplevel
  ax_acc.legend(handles=[Line2D([], [], color="gray", ls="-", label="validation"),
                         Line2D([], [], color="gray", ls="--", label="train")],
                loc="best", fontsize="x-small")
  fig.suptitle(f"{_title(report)}: training of each iteration")
  return fig


def plot_unit_bars(values: dict[str, dict[str, float]], path: str | os.PathLike, *,
                   marked=(), title: str = "", ylabel: str = "") -> pathlib.Path:
  """Grouped bars: ``values = {unit: {kind: number}}``, one group per unit (PNG).

  Units in ``marked`` (e.g. the removed ones) get a red ``x`` under their group.
  """
  plt = _pyplot()
  units = list(values)
  kinds = list(dict.fromkeys(k for v in values.values() for k in v))
  width = 0.8 / max(1, len(kinds))
  fig, ax = plt.subplots(figsize=(max(4.0, 1.2 + 0.6 * len(units)), 3.6), dpi=120)
  for j, kind in enumerate(kinds):
    ax.bar([i + (j - (len(kinds) - 1) / 2) * width for i in range(len(units))],
           [values[u].get(kind, math.nan) for u in units], width, label=kind)
  for i, u in enumerate(units):
    if u in marked:
      ax.plot(i, 0, "x", color="red", ms=9, clip_on=False)
  ax.set_xticks(range(len(units)), units, rotation=45, ha="right", fontsize="small")
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize="medium")
  ax.grid(alpha=0.3, axis="y")
  ax.legend(loc="best", fontsize="small")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return pathlib.Path(path)


def without_timings(report: dict[str, Any]) -> dict[str, Any]:
  """A copy of ``report`` without its wall-clock measurements.

  Drops every iteration's ``seconds`` and the chosen model's measured
  ``merged.latency``: what is left is a pure function of the run's inputs, the
  part a resumed run reproduces exactly.
  """
  out = json.loads(json.dumps(report))
  for entry in out.get("iterations", []):
    entry.pop("seconds", None)
  merged = (out.get("chosen") or {}).get("merged")
  if isinstance(merged, dict):
    merged.pop("latency", None)
  return out


def json_safe(value):
  """``value`` with every non-finite float as ``None``, so that it is strict JSON (``null``).

  A report can hold NaN where a figure has no value: the merged model's
  ``top1_agreement`` on logits that are not one row of classes per example, or a
  difference between outputs that overflowed; ``NaN``/``Infinity`` are not JSON.
  """
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  return value


def write_json(directory: str | os.PathLike, report: dict[str, Any],
               name: str = "report.json") -> pathlib.Path:
  """Writes ``directory/name`` atomically (a reader sees the old file or the new one, whole),
  as strict JSON: a non-finite float is written ``null`` (:func:`json_safe`)."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  tmp = directory / f"{name}.tmp"
  tmp.write_text(json.dumps(json_safe(report), indent=1, allow_nan=False))
  tmp.replace(directory / name)
  return directory / name


def write(directory: str | os.PathLike, report: dict[str, Any]) -> dict[str, pathlib.Path]:
  """Writes ``report.json``, ``report.md`` and the plots into ``directory``.

  The plots: ``accuracy.png``, ``costs.png``, ``<scores>.png``
  (``entropies.png``) and, when ``directory/iterations/*/metrics.jsonl`` hold
  epochs, ``training.png``.

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
    out["costs_plot"] = plot_costs(report, directory / "costs.png")
    scores = plot_scores(report, directory / f"{score_key(report)}.png")
    if scores is not None:
      out["scores_plot"] = scores
    training = plot_training(report, read_histories(directory), directory / "training.png")
    if training is not None:
      out["training_plot"] = training
  return out
