"""Tests for kajax.tasks: the registry of dense tasks and a plug-in task end to end.

The plug-in is a toy fourth task defined here and nowhere in kajax: an *edge map* derived from
the parsing labels (1 where a pixel's class differs from its right or lower neighbour). It is
trained as a teacher, amalgamated with parsing and depth teachers, evaluated, drawn and
predicted by kajax's own code paths, which never name it. Its expected F1 score is computed
here with NumPy from the teacher's outputs.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kajax import (amalgamate, data_sources, export, input_pipeline, losses, predict, tasks,
                   teacher_files)
from kajax import config_blocks
from tests import fakes

# --- the toy plug-in task -------------------------------------------------------------------


def edge_target(batch):
  """(N,H,W) float32 1 where the class changes to the right or below (labels 255 = void are
  never edges), from the labels of the batch."""
  y = jnp.asarray(batch["label"])
  right = jnp.pad(y[:, :, 1:] != y[:, :, :-1], ((0, 0), (0, 0), (0, 1)))
  down = jnp.pad(y[:, 1:, :] != y[:, :-1, :], ((0, 0), (0, 1), (0, 0)))
  return ((right | down) & (y != 255)).astype(jnp.float32)


def _bce(logits, target):
  return jnp.mean(jnp.maximum(logits, 0) - logits * target + jnp.log1p(jnp.exp(-jnp.abs(logits))))


def _edge_update(sums, pred, target, mask):
  valid = jnp.broadcast_to(mask[:, None, None], target.shape)
  p, t = (pred > 0.5) & valid, (target > 0.5) & valid
  return {"tp": sums["tp"] + jnp.sum(p & t), "fp": sums["fp"] + jnp.sum(p & ~t),
          "fn": sums["fn"] + jnp.sum(~p & t)}


def _edge_finalize(sums):
  tp, fp, fn = (float(sums[k]) for k in ("tp", "fp", "fn"))
  return {"f1": 2 * tp / max(2 * tp + fp + fn, 1.0)}


def _edge_task(**overrides):
  parts = dict(
      name="edges", target=edge_target, num_outputs=1,
      readout=lambda raw, extra: jax.nn.sigmoid(raw[..., 0]),
      supervised_losses={"bce": lambda raw, target, extra: _bce(raw[..., 0], target)},
      projection_losses={"bce": lambda s, t, extra: _bce(s[..., 0],
                                                         jax.nn.sigmoid(t[..., 0]))},
      init_sums=lambda n: {k: jnp.zeros((), jnp.int32) for k in ("tp", "fp", "fn")},
      update_sums=_edge_update, finalize=_edge_finalize, table_metrics=("f1",),
      colorize=lambda edges, value_range=None: np.repeat(
          (255 * np.asarray(edges)[..., None]).clip(0, 255).astype(np.uint8), 3, -1))
  parts.update(overrides)
  return tasks.DenseTask(**parts)


@pytest.fixture
def edges():
  task = tasks.register(_edge_task())
  yield task
  tasks.unregister("edges")


# --- registry ------------------------------------------------------------------------------

def test_builtin_dispatch_and_errors():
  assert tasks.registered()[:3] == ("seg", "depth", "normals")
  rng = np.random.default_rng(0)
  s, t = (rng.standard_normal((2, 3, 4, 5)).astype(np.float32) for _ in range(2))
  kl2 = tasks.projection_fn("seg", "kl", temperature=2.0)
  assert float(kl2(s, t)) == pytest.approx(float(losses.kl_projection(s, t, 2.0)))
  d_s, d_t = (rng.uniform(1, 3, (2, 3, 4, 1)).astype(np.float32) for _ in range(2))
  assert float(tasks.projection_fn("depth", "berhu")(d_s, d_t)) == pytest.approx(
      float(losses.berhu_projection(d_s[..., 0], d_t[..., 0])))
  with pytest.raises(ValueError, match=r"loss.depth='huber'.*\['berhu', 'l1', 'log_l1'\]"):
    tasks.projection_fn("depth", "huber", config_key="loss.depth")
  with pytest.raises(ValueError, match=r"'bce'.*\['ce'\]"):
    tasks.supervised_fn("seg", "bce")
  with pytest.raises(ValueError, match=r"'edges' is not a task kajax knows; registered tasks "
                                       r"are \('seg', 'depth', 'normals'"):
    tasks.projection_fn("edges", "l1")
  with pytest.raises(ValueError, match="temperature"):
    tasks.projection_fn("seg", "hard_ce", temperature=2.0)
  assert tasks.accepts_option("seg", "hard_ce", "class_weights")


def test_plugin_task_with_a_missing_or_wrong_part_is_refused_naming_it():
  with pytest.raises(ValueError, match=r"'edges' is missing parts; give projection_losses "
                                       r"\(a dict kind -> fn\(student_raw, teacher_raw"):
    _edge_task(projection_losses=None)
  with pytest.raises(ValueError, match="init_sums .*; update_sums .*; finalize"):
    _edge_task(init_sums=None, update_sums=None, finalize=None)
  with pytest.raises(ValueError, match="supervised_losses must be a non-empty"):
    _edge_task(supervised_losses={})
  with pytest.raises(ValueError, match="readout must be callable"):
    _edge_task(readout="sigmoid")
  with pytest.raises(ValueError, match="must be a Python identifier"):
    _edge_task(name="edge/map")


def test_registering_a_name_twice_is_refused(edges):
  assert "edges" in tasks.registered()
  with pytest.raises(ValueError, match="'edges' is already registered"):
    tasks.register(_edge_task())
  with pytest.raises(ValueError, match="already registered"):
    tasks.register(tasks.get("seg"))


# --- the plug-in, amalgamated with the built-in tasks ---------------------------------------

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("data"))
  data_sources.ensure_built("synthetic_rooms/tiny", path)
  return path


def _numpy_f1_bounds(teacher, variables, source, input_config, ambiguous=1e-4):
  """Edge F1 of a teacher over a split, with the edge map and counts written in NumPy.

  A barely trained teacher has many logits near 0, where another compilation of the same
  forward pass (kajax's evaluation) can round to the other side of the 0.5 threshold. Pixels
  with |logit| < ``ambiguous`` are counted both ways: returns (lowest, highest) F1.
  """
  tp = fp = fn = 0
  unsure_edge = unsure_other = 0
  forward = jax.jit(lambda v, x: teacher.apply(v, x, train=False)[0])
  for batch in input_pipeline.make_eval_iterator(source, input_config, global_batch_size=8,
                                                 process_index=0, process_count=1):
    logit = np.asarray(forward(variables, batch["image"]), np.float64)[..., 0]
    y = np.asarray(batch["label"])
    edge = np.zeros(y.shape, bool)
    edge[:, :, :-1] |= y[:, :, 1:] != y[:, :, :-1]
    edge[:, :-1, :] |= y[:, 1:, :] != y[:, :-1, :]
    edge &= y != 255
    real = np.broadcast_to(np.asarray(batch["mask"])[:, None, None], y.shape)
    sure = real & (np.abs(logit) >= ambiguous)
    p, t = (1 / (1 + np.exp(-logit)) > 0.5) & sure, edge & sure
    tp, fp, fn = tp + np.sum(p & t), fp + np.sum(p & ~t), fn + np.sum(~p & t)
    unsure = real & ~sure
    unsure_edge += np.sum(unsure & edge)
    unsure_other += np.sum(unsure & ~edge)
  f1 = lambda tp, fp, fn: 2 * tp / max(2 * tp + fp + fn, 1)  # noqa: E731
  # Lowest: unsure edges missed, unsure non-edges predicted; highest: the opposite.
  return (f1(tp, fp + unsure_other, fn + unsure_edge), f1(tp + unsure_edge, fp, fn))


def test_plugin_task_is_trained_amalgamated_evaluated_and_predicted(edges, data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  names = ("seg", "depth", "edges")
  for task, c, seed in (("seg", 13, 0), ("depth", 1, 1)):
    fakes.save_random_teacher(os.path.join(workdir, "teachers", task), task, c, seed)
  c = config_blocks.amalgamation_config(
      names, "synthetic_rooms/tiny", unlabeled_split="unlabeled", branch_split="validation",
      test_split="test", block_steps=2, finetune_steps=2, batch_size=8, learning_rate=1e-3,
      input_cfg=config_blocks.input_config(scale_range=(1.0, 1.25)))
  config_blocks.shrink_amalgamation(c)
  c.block.num_steps = c.finetune.num_steps = 2
  c.data_dir = data_dir
  assert c.loss.kinds["edges"] == "bce"  # the plug-in's first projection loss by default
  # The edge teacher is trained by kajax's teacher trainer (labels -> edges via the task).
  teacher = config_blocks.teacher_config(
      "edges", "synthetic_rooms/tiny", "teacher_seg", "test", width_multiplier=1 / 16,
      num_steps=2, batch_size=8, learning_rate=1e-3, input_cfg=config_blocks.input_config())
  config_blocks.shrink_teacher(teacher)
  teacher.num_steps = 2
  c.teachers.edges.train_config = teacher
  c.branch.override = "1,2,3"

  results = amalgamate.train_and_evaluate(c, workdir)

  info = teacher_files.read_info(os.path.join(workdir, "teachers", "edges"))
  assert info.task == "edges" and info.num_outputs == 1
  models = results["models"]
  assert set(models["student"]) >= {"seg/miou", "depth/rmse", "edges/f1", "params"}
  assert "edges/f1" in models["teacher/edges"] and "seg/miou" not in models["teacher/edges"]
  module, variables, info = teacher_files.load_teacher(os.path.join(workdir, "teachers",
                                                                    "edges"))
  source = data_sources.open_split(c.dataset, data_dir, c.test_split)
  low, high = _numpy_f1_bounds(module, variables, source, c.input)
  assert low - 1e-9 <= models["teacher/edges"]["edges/f1"] <= high + 1e-9
  assert high - low < 0.01  # the bounds are tight enough to catch a wrong edge map
  with open(os.path.join(workdir, "results.md")) as f:
    assert "edges f1" in f.read()
  with open(os.path.join(workdir, "student", "student.json")) as f:
    assert json.load(f)["tasks"] == list(names)
  # predict: the plug-in's default file is its colour image.
  image = (np.random.default_rng(0).uniform(0, 255, (64, 80, 3))).astype(np.uint8)
  pred = predict.predict_images(*export.load_student(os.path.join(workdir, "student")),
                                [image])[0]
  assert set(pred) == set(names) and pred["edges"].shape == (64, 80)
  written = predict.write_predictions(str(tmp_path), "x", pred)
  assert os.path.join(str(tmp_path), "x_edges.png") in written
