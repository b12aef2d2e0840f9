"""benchmarks/train_step.py's timing loop: block sizes, warm-up steps and the refusals of its options
(the steps themselves are CIFAR ResNet-18 and MobileNetV2 at batch 128: too big for a CPU test)."""
import ast
import importlib.util
import statistics
import sys

import pytest

import _scripts
from jaxdepth import compilation_cache, optim


@pytest.fixture(scope="module")
def benchmark():
  return _scripts.load("benchmarks/train_step.py")


def test_eval_blocks_time_eval_steps_and_torch_blocks_steps(benchmark):
  args = benchmark.parse_args(["--steps", "2", "--eval-steps", "5", "--repeats", "3",
                               "--warm-steps", "1", "--eval-warm-steps", "4", "--no-torch"])
  calls = []

  def runner(name, seconds):
    def run(n):
      calls.append((name, n))
      return [seconds] * n, [seconds / 2] * n
    return run

  runners = {"torch_channels_last": runner("torch_channels_last", 0.5),
             "eval_1": runner("eval_1", 0.01),
             "torch_contiguous_eval_1": runner("torch_contiguous_eval_1", 0.02)}
  wall, cpu, fastest, blocks, rounds = benchmark.time_side_by_side(runners, args)

  for name in runners:
    warm, block = (4, 5) if "eval" in name else (1, 2)
    assert [n for called, n in calls if called == name] == [warm, block] * 3   # warm-up, timed
  assert wall == {"torch_channels_last": 0.5, "eval_1": 0.01, "torch_contiguous_eval_1": 0.02}
  assert cpu == {"torch_channels_last": 0.25, "eval_1": 0.005, "torch_contiguous_eval_1": 0.01}
  assert fastest == wall
  assert blocks == {name: [seconds] * 3 for name, seconds in wall.items()}
  assert rounds == {}


def test_train_variants_alternate_step_by_step_in_one_block(benchmark):
  args = benchmark.parse_args(["--steps", "3", "--repeats", "2", "--warm-steps", "1",
                               "--no-torch", "--no-eval"])
  calls, clock = [], iter(range(1, 1000))

  def runner(name):
    def run(n):
      calls.append((name, n))
      if name.startswith("torch"):
        return [0.5] * n, [0.0] * n
      return [float(next(clock)) for _ in range(n)], [0.0] * n
    return run

  runners = {name: runner(name) for name in ("plain", "gated", "stats", "torch_contiguous")}
  wall, _, _, blocks, rounds = benchmark.time_side_by_side(
      runners, args, interleaved=["plain", "gated", "stats"])

  jax_calls = [call for call in calls if call[0] != "torch_contiguous"]
  one_block = ([("plain", 1), ("gated", 1), ("stats", 1)]                   # warm-up
               + [("plain", 1), ("gated", 1), ("stats", 1),                 # round 1
                  ("stats", 1), ("gated", 1), ("plain", 1),                 # round 2, reversed
                  ("plain", 1), ("gated", 1), ("stats", 1)])                # round 3
  assert jax_calls == one_block * 2
  assert [n for name, n in calls if name == "torch_contiguous"] == [1, 3] * 2
  # Each round's step, in the order the rounds ran: the fake clock counts jaxdepth's
  # steps, and the first block's warm-up took 1 to 3.
  assert all(len(rounds[name]) == 6 for name in ("plain", "gated", "stats"))
  assert rounds["plain"][:3] == [4, 9, 10] and rounds["stats"][:3] == [6, 7, 12]
  assert "torch_contiguous" not in rounds
  assert [len(b) for b in blocks.values()] == [2, 2, 2, 2]
  assert wall["gated"] == statistics.median(rounds["gated"])


def test_paired_ratios_cancel_a_drift_between_repeats(benchmark):
  # The machine's speed moves from repeat to repeat (1x, 2x, 3x, 1x); "gated" is
  # 1.1x "plain" in three repeats, and its first block fell on a moment three
  # times slower: the paired ratio says 1.1, the ratio of the medians 1.83.
  blocks = {"plain": [1.0, 2.0, 3.0, 1.0], "gated": [3.3, 2.2, 3.3, 1.1]}
  assert benchmark.paired_ratios(blocks, ["plain", "gated"], "plain") == {"gated/plain": 1.1}
  medians = {"plain": 1.5, "gated": 2.75}   # statistics.median of each list
  assert benchmark.ratios(medians, ["gated"], "plain") == {"gated/plain": 1.833}


@pytest.mark.parametrize("option", ["--steps", "--eval-steps", "--repeats", "--batch"])
def test_a_block_of_no_steps_is_refused(benchmark, option, capsys):
  with pytest.raises(SystemExit):
    benchmark.parse_args([option, "0"])
  assert "--batch, --steps, --eval-steps and --repeats must be positive" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--warm-steps", "--eval-warm-steps"])
def test_a_negative_warm_up_is_refused(benchmark, option, capsys):
  with pytest.raises(SystemExit):
    benchmark.parse_args([option, "-1"])
  assert "--eval-warm-steps must be 0 or more" in capsys.readouterr().err


def test_no_torch_ignores_a_stale_torch_python_variable(benchmark, monkeypatch):
  monkeypatch.setenv(benchmark.TORCH_PYTHON_ENV, "/nonexistent")
  args = benchmark.parse_args(["--no-torch"])
  assert benchmark.torch_python(args) is None
  with pytest.raises(SystemExit):   # without --no-torch the variable is still checked
    benchmark.parse_args([])


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None,
                    reason="this Python can import torch")
def test_a_python_without_torch_is_refused_in_one_line(benchmark, capsys):
  with pytest.raises(SystemExit):
    benchmark.parse_args(["--torch-python", sys.executable])
  err = capsys.readouterr().err
  assert "cannot import torch (ModuleNotFoundError: No module named 'torch')" in err
  assert "--no-torch" in err and "Traceback" not in err
  assert repr(sys.executable) in err   # as given: a virtual environment's link is not followed


def test_a_torch_python_that_cannot_run_is_refused_in_one_line(benchmark, capsys, monkeypatch,
                                                               tmp_path):
  # A file name without a slash, relative to the working directory, that is not executable.
  (tmp_path / "notes.txt").write_text("not a program\n")
  monkeypatch.chdir(tmp_path)
  with pytest.raises(SystemExit):
    benchmark.parse_args(["--torch-python", "notes.txt"])
  err = capsys.readouterr().err
  assert f"{tmp_path / 'notes.txt'}' cannot import torch (" in err
  assert "Permission denied" in err and "Traceback" not in err


def test_a_worker_that_stops_at_once_ends_main_with_one_line(benchmark, monkeypatch, tmp_path):
  # It answers "import torch" (exit 0) and then stops without saying it is ready.
  fake = tmp_path / "fake_python"
  fake.write_text("#!/bin/sh\nexit 0\n")
  fake.chmod(0o755)
  monkeypatch.setattr(compilation_cache, "enable", lambda path: None)
  monkeypatch.setattr(benchmark, "jax_runners", lambda *a: pytest.fail("timed without a worker"))
  with pytest.raises(SystemExit) as stop:
    benchmark.main(["--torch-python", str(fake), "--default-malloc", "--models", "resnet18"])
  assert str(stop.value.code).startswith(f"train_step.py: the PyTorch worker ({fake}) did not start: "
                                         f"the PyTorch worker stopped (exit code 0)")


def test_the_paired_interval_holds_the_ratio_and_shrinks_to_it_without_noise(benchmark):
  rounds = {"plain": [1.0, 2.0, 1.5, 3.0, 1.0], "gated": [1.1, 2.2, 1.65, 3.3, 1.1]}
  assert benchmark.paired_interval(rounds, ["plain", "gated"], "plain") == {
      "gated/plain": [1.1, 1.1]}
  noisy = {"plain": [1.0] * 21, "gated": [0.9, 1.1] * 10 + [1.0]}
  low, high = benchmark.paired_interval(noisy, ["gated"], "plain")["gated/plain"]
  median = benchmark.paired_ratios(noisy, ["gated"], "plain")["gated/plain"]
  assert (low, median, high) == (0.9, 1.0, 1.1)


def _keywords(path, callee):
  """The literal keyword arguments of the one call to ``callee`` (a dotted name) in ``path``."""
  calls = [node for node in ast.walk(ast.parse((_scripts.ROOT / path).read_text()))
           if isinstance(node, ast.Call) and ast.unparse(node.func) == callee]
  assert len(calls) == 1, (path, callee, len(calls))
  return {k.arg: ast.literal_eval(k.value) for k in calls[0].keywords}


def test_torch_reference_steps_with_the_sgd_recipe_of_jaxdepths_timed_step():
  # torch isn't a dependency (it may be absent here): the two scripts are read, not run.
  recipe = optim.Recipe(**_keywords("benchmarks/train_step.py", "optim.Recipe"))
  torch_sgd = {"nesterov": False, "weight_decay": 0.0,          # torch.optim.SGD's defaults
               **_keywords("benchmarks/torch_reference.py", "torch.optim.SGD")}
  assert recipe.optimizer == "sgd"
  for key in ("lr", "momentum", "weight_decay", "nesterov"):
    assert torch_sgd[key] == getattr(recipe, key), (key, torch_sgd[key], getattr(recipe, key))
