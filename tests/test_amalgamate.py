"""End-to-end tests of kajax.amalgamate (amalgamation) and kajax.train_teacher on synthetic rooms
(tiny config, built once per session), with random tiny teachers: resume after a kill,
config errors, the non-finite-loss stop, the full four-step run with its outputs."""

import json
import os
import sys

import jax
import numpy as np
import pytest

from kajax import (amalgamate, checkpointing, data_sources, export, input_pipeline,
                   train_teacher)
from tests import fakes

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import demo  # noqa: E402  (configs/ is not a package)
import teacher_rooms_seg  # noqa: E402


class Killed(Exception):
  """Stands for the process being killed between two steps."""


class KillAfter:
  """Wraps a pipeline iterator; raises ``Killed`` when asked for batch ``n + 1``.

  ``poison_after`` instead returns NaN images from then on (a diverging run).
  """

  def __init__(self, iterator, n, poison=False):
    self._it, self._n, self._poison, self._count = iterator, n, poison, 0

  def __next__(self):
    self._count += 1
    batch = next(self._it)
    if self._count > self._n:
      if not self._poison:
        raise Killed()
      batch = dict(batch, image=np.full_like(batch["image"], np.nan))
    return batch

  def get_state(self):
    return self._it.get_state()

  def set_state(self, state):
    self._it.set_state(state)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("data"))
  data_sources.ensure_built("synthetic_rooms/tiny", path)
  return path


def _amalgamation_config(data_dir, workdir, **overrides):
  c = demo.get_config("tiny")
  c.data_dir = data_dir
  for t in c.tasks:
    c.teachers[t].train_config = None
  for key, value in overrides.items():
    block = c
    *parents, leaf = key.split(".")
    for p in parents:
      block = block[p]
    block[leaf] = value
  return c


def _random_teachers(workdir, widths=(1 / 16, 1 / 16), tasks=(("seg", 13), ("depth", 1))):
  for (task, c), width, seed in zip(tasks, widths, (0, 1)):
    fakes.save_random_teacher(os.path.join(workdir, "teachers", task), task, c, seed, width)


def _patch_kill(monkeypatch, module, n, poison=False):
  original = module._train_iterator
  monkeypatch.setattr(module, "_train_iterator",
                      lambda *a, **k: KillAfter(original(*a, **k), n, poison))


def _leaves_close(a, b, **tol):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


def test_block_phase_resume_equals_uninterrupted(data_dir, tmp_path, monkeypatch):
  results = []
  for name, kill in (("straight", False), ("killed", True)):
    workdir = str(tmp_path / name)
    _random_teachers(workdir)
    config = _amalgamation_config(data_dir, workdir)  # 4 block steps, checkpoint every 2
    run = amalgamate.setup(config, workdir)
    if kill:
      with monkeypatch.context() as m:
        _patch_kill(m, amalgamate, 2)
        with pytest.raises(Killed):
          amalgamate.block_phase(run)
      assert checkpointing.Checkpointer(os.path.join(workdir, "checkpoints", "block")
                                        ).latest_step() == 2
    results.append(jax.device_get(amalgamate.block_phase(run)))  # the same command again
  _leaves_close(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_precomputed_teacher_targets_train_like_per_step_ones(data_dir, tmp_path):
  """Without zoom or jitter and with flip-averaged targets, precomputing the teachers once
  (kajax.teacher_targets) trains the same trunk as running them every step, up to float
  round-off (SGD: an update linear in the gradient, so round-off stays round-off)."""
  results = []
  for mode in ("per_step", "precomputed"):
    workdir = str(tmp_path / mode)
    _random_teachers(workdir)
    config = _amalgamation_config(
        data_dir, workdir, **{"loss.teacher_targets": mode, "loss.teacher_flip_average": True,
                              "input.scale_range": (1.0, 1.0),
                              "input.color_jitter": (0.0, 0.0, 0.0), "optimizer.name": "sgd",
                              "optimizer.learning_rate": 0.05,
                              # Pixel weights by the teacher's argmax would turn a round-off
                              # near-tie into a different weight; the plain KL is smooth.
                              "loss.seg_class_weighting": "none"})
    run = amalgamate.setup(config, workdir)
    results.append(jax.device_get(amalgamate.block_phase(run)))
    assert (run.targets is None) == (mode == "per_step")
  _leaves_close(results[0], results[1], rtol=1e-4, atol=1e-6)
  moved = jax.device_get(amalgamate.student_init.init_trunk_from_teachers(
      run.spec, {n: tc.variables for n, tc in run.teachers.items()}, jax.random.key(0)))
  diffs = [np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in
           zip(jax.tree_util.tree_leaves(moved["params"]),
               jax.tree_util.tree_leaves(results[1]["params"]))]
  assert max(diffs) > 1e-3  # training did move the trunk, so the comparison means something


def test_a_finished_phase_resumes_without_computing_the_targets(data_dir, tmp_path,
                                                               monkeypatch):
  """Rerunning a finished run restores its phases; the precomputed teacher targets (minutes
  of teacher inference at the demo's size) are computed only when a step is left to train."""
  workdir = str(tmp_path / "run")
  _random_teachers(workdir)
  config = _amalgamation_config(data_dir, workdir, **{"loss.teacher_targets": "precomputed"})
  first = jax.device_get(amalgamate.block_phase(amalgamate.setup(config, workdir)))

  def refuse(*args, **kwargs):
    raise AssertionError("teacher targets computed for a finished phase")

  monkeypatch.setattr(amalgamate.teacher_targets, "compute", refuse)
  run = amalgamate.setup(config, workdir)
  again = jax.device_get(amalgamate.block_phase(run))
  assert run.targets is None
  _leaves_close(first, again, rtol=0, atol=0)
  # One step short of the end, the targets are needed again.
  config.block.num_steps += 1
  with pytest.raises(AssertionError, match="finished phase"):
    amalgamate.block_phase(amalgamate.setup(config, workdir))


def test_teacher_training_resumes_after_a_kill(data_dir, tmp_path, monkeypatch):
  config = teacher_rooms_seg.get_config("tiny")
  config.data_dir = data_dir
  config.num_steps, config.checkpoint_every = 4, 2
  train_teacher.train_and_evaluate(config, str(tmp_path / "straight"))
  killed = str(tmp_path / "killed")
  original = input_pipeline.make_train_iterator
  with monkeypatch.context() as m:
    m.setattr(train_teacher.input_pipeline, "make_train_iterator",
              lambda *a, **k: KillAfter(original(*a, **k), 2))
    with pytest.raises(Killed):
      train_teacher.train_and_evaluate(config, killed)
  assert not os.path.exists(os.path.join(killed, "teacher"))  # nothing exported yet
  train_teacher.train_and_evaluate(config, killed)
  a = fakes.teacher_files.load_teacher(str(tmp_path / "straight" / "teacher"))[1]
  b = fakes.teacher_files.load_teacher(os.path.join(killed, "teacher"))[1]
  _leaves_close(a, b, rtol=1e-5, atol=1e-6)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(data_dir, tmp_path,
                                                              monkeypatch):
  workdir = str(tmp_path / "nan")
  _random_teachers(workdir)
  run = amalgamate.setup(_amalgamation_config(data_dir, workdir), workdir)
  _patch_kill(monkeypatch, amalgamate, 2, poison=True)
  with pytest.raises(FloatingPointError, match="step [34]"):
    amalgamate.block_phase(run)
  # The poisoned step 3 was never saved: the latest checkpoint is the good one of step 2.
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints", "block"))
  assert ckpt.latest_step() == 2


@pytest.mark.parametrize("problem, match", [
    ("missing", r"No teacher or student in .*nothing_here \(--config.teachers.depth.dir="),
    ("wrong_task", "holds a 'seg' teacher"),
    ("geometry", "cannot be spliced"),
    ("batch", "batch_size=12"),
    ("task_names", "one entry per task"),
])
def test_config_errors_are_clear(data_dir, tmp_path, problem, match):
  workdir = str(tmp_path / problem)
  _random_teachers(workdir, widths=(1 / 16, 1 / 8) if problem == "geometry" else
                   (1 / 16, 1 / 16))
  overrides = {}
  if problem == "missing":
    overrides["teachers.depth.dir"] = str(tmp_path / "nothing_here")
  elif problem == "wrong_task":
    overrides["teachers.depth.dir"] = os.path.join(workdir, "teachers", "seg")
  elif problem == "batch":
    overrides["batch_size"] = 12
  config = _amalgamation_config(data_dir, workdir, **overrides)
  if problem == "task_names":
    config.loss.lambdas = {"seg": 1.0, "normals": 1.0}
  with pytest.raises((ValueError, FileNotFoundError), match=match):
    amalgamate.train_and_evaluate(config, workdir)


@pytest.mark.slow
def test_four_steps_end_to_end_with_a_kill_in_finetuning(data_dir, tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  _random_teachers(workdir)
  config = _amalgamation_config(data_dir, workdir, **{"branch.override": "1,2"})
  original = amalgamate._train_iterator
  calls = []

  def kill_second_phase(*args, **kwargs):
    calls.append(1)
    it = original(*args, **kwargs)
    return KillAfter(it, 2) if len(calls) == 2 else it  # the fine-tuning iterator

  with monkeypatch.context() as m:
    m.setattr(amalgamate, "_train_iterator", kill_second_phase)
    with pytest.raises(Killed):
      amalgamate.train_and_evaluate(config, workdir)
  assert os.path.exists(os.path.join(workdir, "branch_search.json"))
  results = amalgamate.train_and_evaluate(config, workdir)  # resumes fine-tuning at step 2

  with open(os.path.join(workdir, "results.json")) as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(results))
  assert saved["branch_points"] == {"seg": 1, "depth": 2}
  models = saved["models"]
  for key in ("seg/miou", "seg/pixel_acc", "seg/mean_acc", "depth/rmse", "depth/abs_rel",
              "depth/delta1", "params", "gflops"):
    assert key in models["student"], key
  assert set(models) >= {"teacher/seg", "teacher/depth", "student"}
  assert len(saved["branch_losses"]["seg"]) == 5
  # The pruned export has exactly the parameters the table reports, and fewer than the
  # teachers together (shared encoder and trunk).
  module, variables, info = export.load_student(os.path.join(workdir, "student"))
  n = sum(x.size for x in jax.tree_util.tree_leaves(variables["params"]))
  assert models["student"]["params"] == n
  assert n < models["teacher/seg"]["params"] + models["teacher/depth"]["params"]
  assert "up1" not in variables["params"] and "up2" not in variables["params"]  # max k = 2
  for name in ("samples.png", "branch_losses.png", "results.md"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0
  # mode=evaluate on the finished workdir reproduces the numbers.
  again = amalgamate.evaluate_workdir(config, workdir)
  assert again["models"]["student"]["seg/miou"] == pytest.approx(
      models["student"]["seg/miou"])


def test_weights_from_counts_by_hand():
  # freq = (0.5, 0.25, 0.25, 0); median of seen = 0.25 -> (0.5, 1, 1) ** 0.5, unseen = max.
  w = train_teacher.weights_from_counts(np.array([50, 25, 25, 0]), 0.5)
  raw = np.array([np.sqrt(0.5), 1.0, 1.0])
  np.testing.assert_allclose(w[:3], raw / raw.mean(), rtol=1e-6)
  assert w[3] == pytest.approx(w[:3].max())


# --- Reruns whose settings differ from what the workdir recorded ----------------------------

# A recorded branch search: k = (1, 2) chosen by override; with tau = 0.1 the rule would pick
# (2, 1) on this table (deepest k within 10% of each row's minimum), with tau = 0 (1, 1).
TABLE = {"seg": [1.0, 0.9, 0.95, 2.0, 3.0], "depth": [0.5, 0.5, 0.6, 0.7, 0.8]}


def _recorded(tmp_path, selected_by="override"):
  from kajax import branch_search  # pylint: disable=import-outside-toplevel
  branch_search.save_result(str(tmp_path), ("seg", "depth"),
                            np.array([TABLE["seg"], TABLE["depth"]]), 0.1, (1, 2), selected_by)
  return branch_search.load_result(str(tmp_path))


@pytest.mark.parametrize("override, tau, match", [
    ("2,2", 0.1, r"asks for seg=2, depth=2 \(--config.branch.override=2,2\)"),
    ("", 0.1, r"asks for seg=2, depth=1 \(the rule with --config.branch.tau=0.1"),
    ("", 0.0, r"asks for seg=1, depth=1 \(the rule with --config.branch.tau=0.0"),
])
def test_a_different_branch_choice_than_recorded_stops(tmp_path, override, tau, match):
  search = _recorded(tmp_path)
  config = _amalgamation_config("unused", str(tmp_path), **{"branch.override": override,
                                                            "branch.tau": tau})
  with pytest.raises(ValueError, match=match) as e:
    amalgamate.check_recorded_search(config, ("seg", "depth"), search, str(tmp_path))
  message = str(e.value)
  assert "chose branch points seg=1, depth=2 (override)" in message
  assert f"rm -r {tmp_path / 'branch_search.json'} {tmp_path / 'checkpoints' / 'finetune'}" \
      in message


def test_the_same_branch_choice_is_reused(tmp_path):
  search = _recorded(tmp_path)
  for override in ("1,2", "1, 2"):
    config = _amalgamation_config("unused", str(tmp_path), **{"branch.override": override})
    assert amalgamate.check_recorded_search(config, ("seg", "depth"), search,
                                            str(tmp_path)) == (1, 2)
  # Recorded by the rule: a rerun with the same rule and no override (the demo's default is
  # k = 1, so it is switched off here) agrees.
  search = _recorded(tmp_path, "rule (tau=0.1)")
  search["branch_points"] = {"seg": 2, "depth": 1}
  config = _amalgamation_config("unused", str(tmp_path), **{"branch.override": ""})
  assert amalgamate.check_recorded_search(config, ("seg", "depth"), search,
                                          str(tmp_path)) == (2, 1)
  with pytest.raises(ValueError, match="made for teachers"):
    amalgamate.check_recorded_search(config, ("seg", "normals"), search, str(tmp_path))


def test_a_rerun_through_the_entry_point_stops_before_training(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  _random_teachers(workdir)
  _recorded(workdir)
  config = _amalgamation_config(data_dir, workdir, **{"branch.override": "0,0"})
  with pytest.raises(ValueError, match="asks for seg=0, depth=0"):
    amalgamate.train_and_evaluate(config, workdir)
  for phase in ("block", "finetune"):  # nothing was trained
    assert checkpointing.Checkpointer(os.path.join(workdir, "checkpoints", phase)
                                      ).latest_step() is None


def test_finetuning_checkpoint_of_other_branch_points_is_not_resumed(data_dir, tmp_path,
                                                                    monkeypatch):
  from kajax import student_init  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path / "run")
  _random_teachers(workdir)
  run = amalgamate.setup(_amalgamation_config(data_dir, workdir), workdir)
  trunk = student_init.init_trunk_from_teachers(
      run.spec, {t: tc.variables for t, tc in run.teachers.items()}, jax.random.key(0))
  with monkeypatch.context() as m:  # fine-tune k = (1, 2) for 2 steps, then "killed"
    _patch_kill(m, amalgamate, 2)
    with pytest.raises(Killed):
      amalgamate.finetune_phase(run, (1, 2), trunk)
  ckpt_dir = os.path.join(workdir, "checkpoints", "finetune")
  with pytest.raises(ValueError) as e:
    amalgamate.finetune_phase(run, (2, 2), trunk)
  message = str(e.value)
  assert "branch points seg=1, depth=2, but this run fine-tunes seg=2, depth=2" in message
  assert f"rm -r {ckpt_dir}" in message and "--config.branch.override=1,2" in message
  assert checkpointing.Checkpointer(ckpt_dir).latest_step() == 2  # nothing lost
