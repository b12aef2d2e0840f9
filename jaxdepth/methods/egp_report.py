"""What an EGP / NEPENTHE run's report adds: sparsity, non-zero weights, merged costs, plots.

:func:`jaxdepth.driver.run` writes the common report (accuracy, entropies per
site, the operating point). The pruning methods' decisions also carry, per
iteration, the amounts pruned and the sparsity of every pruned layer
(:meth:`jaxdepth.methods.egp.Egp.decide`). :func:`complete` adds to every
iteration what is read from its saved model: the non-zero parameters, and the
MACs, parameters and depths of the model merged by
:func:`jaxdepth.surgery.collapse`; :func:`table` and :func:`plot_sparsity`
present them; :func:`write` writes everything beside the common report::

    result = driver.run(Egp(), spec, dataset, recipe, workdir)
    full = egp_report.complete(workdir, result.report)
    egp_report.write(workdir, full)       # report.json/.md, accuracy, entropies, sparsity.png
"""
from __future__ import annotations

import os
import pathlib
from typing import Any

import jax
import numpy as np

from jaxdepth import checkpoint, costs
from jaxdepth import report as report_lib

__all__ = ["complete", "table", "plot_sparsity", "write"]


def _nonzero(variables) -> int:
  return int(sum(np.count_nonzero(np.asarray(x))
                 for x in jax.tree.leaves(jax.device_get(variables.get("params", {})))))


def complete(workdir: str | os.PathLike, report: dict[str, Any], *, merge: bool = True
             ) -> dict[str, Any]:
  """The report with ``pruning`` facts in every iteration, read from its saved model.

  Args:
    workdir: the run's directory (``iterations/NNN/model`` are read).
    report: the report :func:`jaxdepth.driver.run` returned.
    merge: also collapse every iteration's model (exact passes) and give its costs.

  Returns:
    A new report: each entry gets ``pruning = {"nonzero_params", "params",
    "nominal_sparsity", "global_sparsity", "zero_entropy", "merged": {"params",
    "macs", "nonlinear_depth", "weight_depth"}}`` (the sparsities are of the
    network the entry evaluates: the prunable layers' masked fraction).
  """
  from jaxdepth import surgery  # pylint: disable=import-outside-toplevel
  workdir = pathlib.Path(workdir)
  out = dict(report)
  entries = []
  rho = (report.get("method_options") or {}).get("rho", 0.5)
  for e in report.get("iterations", []):
    e = dict(e)
    spec, variables = checkpoint.load_model(workdir / "iterations" / f"{e['iteration']:03d}"
                                            / "model")
    d = e.get("decision") or {}
    facts = {"nonzero_params": _nonzero(variables), "params": costs.count_params(spec),
             "nominal_sparsity": 1.0 - (1.0 - rho) ** (d.get("round", 1) - 1),
             "global_sparsity": d.get("global_sparsity"),
             "zero_entropy": d.get("zero_entropy", [])}
    if merge:
      merged, _ = surgery.collapse(spec, variables, mode="exact")
      s = costs.summary(merged)
      facts["merged"] = {k: s[k] for k in ("params", "macs", "nonlinear_depth", "weight_depth")}
    e["pruning"] = facts
    entries.append(e)
  out["iterations"] = entries
  return out


def _pct(x) -> str:
  return "–" if x is None else f"{100 * x:.1f}"


def _count(x) -> str:
  """An integer with thousands separators; '–' when the figure is missing (not computed)."""
  return "–" if x is None else f"{x:,}"


def table(report: dict[str, Any]) -> str:
  """Markdown: per iteration, nominal and real sparsity, weights, merged costs, collapsed sites."""
  lines = ["| iter | nominal sparsity % | real sparsity % | non-zero / total params | "
           "merged MACs | merged non-linear depth | zero entropy now |",
           "|---:|---:|---:|---:|---:|---:|:---|"]
  for e in report.get("iterations", []):
    p = e.get("pruning") or {}
    merged = p.get("merged") or {}
    lines.append(
        f"| {e['iteration']} | {_pct(p.get('nominal_sparsity'))} | "
        f"{_pct(p.get('global_sparsity'))} | {_count(p.get('nonzero_params'))} / "
        f"{_count(p.get('params', e.get('params')))} | {_count(merged.get('macs'))} | "
        f"{_count(merged.get('nonlinear_depth'))} | "
        f"{', '.join(p.get('zero_entropy') or []) or '–'} |")
  return "\n".join(lines) + "\n"


def plot_sparsity(report: dict[str, Any], path: str | os.PathLike) -> pathlib.Path | None:
  """Each pruned layer's sparsity across iterations (lines; PNG), ``None`` without decisions."""
  fig = _sparsity_figure(report)
  return None if fig is None else report_lib._save(fig, path)  # pylint: disable=protected-access


def _sparsity_figure(report):
  entries = [e for e in report.get("iterations", []) if e.get("decision")]
  if not entries:
    return None
  layers: list[str] = []
  for e in entries:
    layers += [l for l in e["decision"].get("layer_sparsity", {}) if l not in layers]
  if not layers:
    return None
  plt = report_lib._pyplot()  # pylint: disable=protected-access
  fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
  x = [e["iteration"] for e in entries]
  # One (colour, line style) per layer: 20 colours, then the next line style (ResNet-20 has 18
  # pruned layers, ResNet-18 and Swin-T more), so that no two layers' lines look alike.
  colors = plt.cm.tab20.colors
  styles = ("-", "--", ":", "-.")
  for i, l in enumerate(layers):
    ax.plot(x, [100 * e["decision"]["layer_sparsity"].get(l, np.nan) for e in entries],
            marker="o", ms=3, color=colors[i % len(colors)],
            linestyle=styles[(i // len(colors)) % len(styles)], label=l)
  ax.plot(x, [100 * e["decision"].get("global_sparsity", np.nan) for e in entries], "k--",
          lw=2, label="all pruned layers")
  ax.set_xlabel("iteration (pruning rounds before its training)")
  ax.xaxis.set_major_locator(report_lib._integer_ticks())  # pylint: disable=protected-access
  ax.set_ylabel("weights pruned (%)")
  ax.set_ylim(-2, 102)
  ax.set_title(f"{report_lib.display_name(report.get('method', ''))}: sparsity per layer")
  ax.grid(alpha=0.3)
  ax.legend(loc="best", fontsize="x-small", ncol=1 + len(layers) // 12)
  return fig


def write(directory: str | os.PathLike, report: dict[str, Any]) -> dict[str, pathlib.Path]:
  """The common report files (:func:`jaxdepth.report.write`) plus the sparsity table and plot.

  Without matplotlib (the ``plots`` extra) no plot is drawn, the sparsity plot
  included (:func:`jaxdepth.report.write` warns that it drew none); the tables are written.
  """
  directory = pathlib.Path(directory)
  out = report_lib.write(directory, report)
  with open(directory / "report.md", "a", encoding="utf-8") as f:
    f.write("\n## Pruning\n\n" + table(report))
  if report_lib.plots_available():
    sparsity = plot_sparsity(report, directory / "sparsity.png")
    if sparsity is not None:
      out["sparsity_plot"] = sparsity
  return out
