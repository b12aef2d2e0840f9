"""benchmarks/train_step.py's timing loop: block sizes, warm-up steps and the refusals of its options
(the steps themselves are CIFAR ResNet-18 and MobileNetV2 at batch 128: too big for a CPU test)."""
import pytest

import _scripts


@pytest.fixture(scope="module")
def benchmark():
  return _scripts.load("benchmarks/train_step.py")


def test_eval_blocks_time_eval_steps_and_train_blocks_steps(benchmark):
  args = benchmark.parse_args(["--steps", "2", "--eval-steps", "5", "--repeats", "3",
                               "--warm-steps", "1", "--eval-warm-steps", "4", "--no-torch"])
  calls = []

  def runner(name, seconds):
    def run(n):
      calls.append((name, n))
      return [seconds] * n, [seconds / 2] * n
    return run

  runners = {"plain": runner("plain", 0.5), "eval_1": runner("eval_1", 0.01),
             "torch_contiguous_eval_1": runner("torch_contiguous_eval_1", 0.02)}
  wall, cpu, fastest, blocks = benchmark.time_side_by_side(runners, args)

  for name in runners:
    warm, block = (4, 5) if "eval" in name else (1, 2)
    assert [n for called, n in calls if called == name] == [warm, block] * 3   # warm-up, timed
  assert wall == {"plain": 0.5, "eval_1": 0.01, "torch_contiguous_eval_1": 0.02}
  assert cpu == {"plain": 0.25, "eval_1": 0.005, "torch_contiguous_eval_1": 0.01}
  assert fastest == wall
  assert blocks == {name: [seconds] * 3 for name, seconds in wall.items()}


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
  assert "--eval-steps" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--warm-steps", "--eval-warm-steps"])
def test_a_negative_warm_up_is_refused(benchmark, option, capsys):
  with pytest.raises(SystemExit):
    benchmark.parse_args([option, "-1"])
  assert "--eval-warm-steps must be 0 or more" in capsys.readouterr().err
