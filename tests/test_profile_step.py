"""kajax.benchmarks.profile_step: the trace summary's arithmetic, and a real trace read back."""

import json

import pytest

from kajax.benchmarks import profile_step, step_runners
from kajax.benchmarks.profile_step import OpEvent
from tests import benchmark_cli


def test_concurrency_counts_overlapping_operations_by_hand():
  # Window [0, 30): A [0, 10), B [5, 15), C [20, 25).
  # None running: [15, 20) and [25, 30) = 10; one: [0, 5), [10, 15), [20, 25) = 15;
  # two: [5, 10) = 5.
  events = [OpEvent("a", 0, 10), OpEvent("b", 5, 10), OpEvent("c", 20, 5)]
  assert profile_step.concurrency(events, 0, 30) == {0: 10, 1: 15, 2: 5}


def test_concurrency_clips_to_the_window_and_back_to_back_events_do_not_overlap():
  # [-5, 3) clipped to [0, 3); [3, 6) starts as it ends; [8, 20) clipped to [8, 10).
  events = [OpEvent("a", -5, 8), OpEvent("b", 3, 3), OpEvent("c", 8, 12)]
  assert profile_step.concurrency(events, 0, 10) == {0: 2, 1: 8}
  assert profile_step.concurrency([], 0, 10) == {0: 10}


def test_op_group_drops_only_the_numeric_suffix():
  assert profile_step.op_group("ynn_fusion.141") == "ynn_fusion"
  assert profile_step.op_group("dot_general") == "dot_general"
  assert profile_step.op_group("slice_bitcast_fusion.7") == "slice_bitcast_fusion"


def test_summarize_per_step_numbers_by_hand():
  events = [OpEvent("dot.1", 0, 4_000_000), OpEvent("dot.2", 2_000_000, 4_000_000),
            OpEvent("conv", 10_000_000, 2_000_000)]
  s = profile_step.summarize(events, num_steps=2)
  assert s["op_ms_per_step"] == pytest.approx(5.0)  # (4 + 4 + 2) ms over 2 steps
  assert s["window_ms_per_step"] == pytest.approx(6.0)  # [0, 12) ms
  assert s["concurrency_ms_per_step"] == pytest.approx({0: 2.0, 1: 3.0, 2: 1.0})
  assert [g["group"] for g in s["groups"]] == ["dot", "conv"]
  assert s["groups"][0]["share"] == pytest.approx(0.8)
  assert s["groups"][0]["count_per_step"] == 1


def test_profile_of_a_real_step_is_consistent(tmp_path):
  """The CLI traces a small teacher step and reads XLA's own events back."""
  out = tmp_path / "profile.json"
  stdout = benchmark_cli.run("profile_step", [
      "--phase=teacher_train", "--resolution=32x64", "--width=0.0625", "--batch_size=2",
      "--steps=2", "--warmup=1", f"--json={out}", f"--trace_dir={tmp_path / 'trace'}"],
      cwd=tmp_path, timeout=600)
  assert "| operation group |" in stdout
  s = json.loads(out.read_text())
  levels = {int(k): v for k, v in s["concurrency_ms_per_step"].items()}
  # The levels partition the window, and level-weighted time is the operations' total.
  assert sum(levels.values()) == pytest.approx(s["window_ms_per_step"], rel=1e-6)
  assert sum(k * v for k, v in levels.items()) == pytest.approx(s["op_ms_per_step"],
                                                                rel=1e-6)
  assert s["ops_per_step"] > 20  # a SegNet step is many operations
  assert 0 < s["op_ms_per_step"] and s["groups"]
  assert sum(g["share"] for g in s["groups"]) <= 1 + 1e-9
  assert list(tmp_path.glob("trace/**/*.xplane.pb"))  # --trace_dir keeps the trace


def test_innermost_drops_events_that_contain_others_on_the_same_thread():
  # A cond [0, 10) around two branch operations [1, 4) and [5, 9); then one more op [12, 13).
  events = [OpEvent("cond.1", 0, 10), OpEvent("ynn_fusion.3", 1, 3),
            OpEvent("dot.2", 5, 4), OpEvent("copy.9", 12, 1)]
  kept = profile_step.innermost(events)
  assert [e.name for e in kept] == ["ynn_fusion.3", "dot.2", "copy.9"]
  # Nested two deep: only the innermost survives; back-to-back events are both leaves.
  nested = [OpEvent("while", 0, 10), OpEvent("cond", 0, 8), OpEvent("a", 2, 2),
            OpEvent("b", 4, 2)]
  assert [e.name for e in profile_step.innermost(nested)] == ["a", "b"]


def test_thread_operations_keep_an_operation_around_its_thread_pool_wait():
  # YNNPACK records its wait for worker threads inside the operation's own event; the
  # executor's events wrap everything. Only the operations remain, with their full time.
  events = [OpEvent("ThunkExecutor::Execute", 0, 100), OpEvent("ynn_fusion.4", 10, 50),
            OpEvent("SlinkyThreadPool::Await", 40, 15), OpEvent("end: ynn_fusion.4", 60, 0),
            OpEvent("copy.2", 70, 5)]
  kept = profile_step.thread_operations(events)
  assert [(e.name, e.duration_ns) for e in kept] == [("ynn_fusion.4", 50), ("copy.2", 5)]


@pytest.mark.parametrize("flag_values, message", [
    (("96-128", "3,1"), "must look like 96x128"),
    (("16x128", "3,1"), "at least 32"),
    (("96x128", "3;1"), "must look like 3,1"),
    (("96x128", "3,5"), "in 0..4"),
    (("96x128", "3"), "one per task"),
])
def test_benchmark_shape_flags_name_the_bad_value(flag_values, message):
  with pytest.raises(ValueError, match=message):
    step_runners.parse_shape_flags(*flag_values)
  assert step_runners.parse_shape_flags("240X320", "3,1") == ((240, 320), (3, 1))
