"""The report's figures read right (ticks, labels, no overlap)."""
import re

from jaxdepth import report


def _entry(it, removed, acc, macs):
  return {"iteration": it, "units_removed": removed, "units_total": 6, "val_accuracy": acc,
          "test_accuracy": acc, "params": 1, "macs": macs,
          "depth": {"nonlinear_depth": 6 - removed, "weight_depth": 7},
          "merged": {"macs": macs, "nonlinear_depth": 6 - removed, "weight_depth": 7}}


def _labels(ax):
  return [t.get_text() for t in ax.get_xticklabels() if t.get_text()]


def test_depth_panels_tick_integers_even_when_the_depth_never_changes():
  # Before: the constant weight depth 7 spans 6.6-7.4, one integer, and the axis fell back to
  # 6.56, 6.64, ... (TLC's default run on digits_cnn).
  rep = {"method": "tlc", "chosen": None,
         "iterations": [_entry(0, 0, .97, 635_712), _entry(1, 2, .99, 600_128)]}
  fig = report._costs_figure(rep)
  fig.canvas.draw()
  for ax in fig.axes[1:]:
    labels = _labels(ax)
    assert labels and all(float(t).is_integer() for t in labels), (ax.get_xlabel(), labels)
  assert "7" in _labels(fig.axes[2])
  # The MACs panel counts in k (600k, 610k, ...), not 600000, 605000, ... running together.
  macs = _labels(fig.axes[0])
  assert macs and all(re.fullmatch(r"\d+(\.\d+)?k", t) for t in macs), macs
  assert report._short_count(1_250_000) == "1.25M" and report._short_count(605_000) == "605k"
  assert report._short_count(42) == "42"


def test_training_figure_labels_stay_clear_of_the_title():
  # Before: the right panel's y-label "top-1 accuracy (%): validation solid, train dashed" was
  # taller than the 4-inch figure's axes and ran into the suptitle.
  rep = {"method": "easier", "model": "digits_cnn", "dataset": "digits",
         "iterations": [_entry(0, 0, .9, 1000), _entry(1, 1, .8, 900)]}
  histories = {it: [{"epoch": e, "train_loss": 1.0 / e, "train_accuracy": 0.5,
                     "val_accuracy": 0.6} for e in (1, 2)] for it in (0, 1)}
  fig = report._training_figure(rep, histories)
  fig.tight_layout()                                  # as report.plot_training saves it
  fig.canvas.draw()
  renderer = fig.canvas.get_renderer()
  title = fig._suptitle.get_window_extent(renderer)  # pylint: disable=protected-access
  for ax in fig.axes:
    label = ax.yaxis.label.get_window_extent(renderer)
    assert not label.overlaps(title), (ax.get_ylabel(), label, title)
  # The line styles are still said: in the accuracy panel's legend.
  styles = {h.get_label(): h.get_linestyle() for h in fig.axes[1].get_legend().legend_handles}
  assert styles == {"validation": "-", "train": "--"}



def test_titles_spell_lacoot_as_the_method_does_and_others_in_capitals():
  # Before: "# LACOOT: resnet20 on digits" and the same in the plots' titles.
  entries = [_entry(0, 0, .9, 1000), _entry(1, 1, .8, 900)]
  for method, name in (("lacoot", "LaCoOT"), ("egp", "EGP"), ("mymethod", "MYMETHOD")):
    rep = {"method": method, "model": "resnet20", "dataset": "digits", "chosen": None,
           "iterations": entries}
    assert report.table(rep).startswith(f"# {name}: resnet20 on digits\n")
    assert report._accuracy_figure(rep).axes[0].get_title() == f"{name}: resnet20 on digits"
    assert report._costs_figure(rep)._suptitle.get_text().startswith(  # pylint: disable=protected-access
        f"{name}: resnet20 on digits: accuracy")
