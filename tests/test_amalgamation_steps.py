"""Tests for kajax.amalgamation_steps: the compiled steps of block-wise amalgamation, branch
search and fine-tuning, on 8 fake CPU devices with tiny random teachers.

Expected values come from composing the teachers and the student directly (``SegNet.decode``,
``Student.apply``) and from NumPy loops, never from the steps under test.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kajax import amalgamation_steps as steps
from kajax import optim, parallel, segnet, student_init, student_model, student_spec, tasks
from kajax import teacher_model
from tests import fakes

TASKS = ("seg", "depth")
LAMBDAS = {"seg": 1.0, "depth": 1.0}
BATCH = (8, 32, 64, 3)
# SGD: its update is linear in the gradient, so float round-off between device layouts stays
# round-off (Adam's first step is ~lr * sign(g) and would amplify it for tiny gradients).
OPT = {"name": "sgd", "learning_rate": 0.05, "momentum": 0.9, "weight_decay": 1e-4,
       "schedule": "cosine", "warmup_steps": 0}


class _Cfg(dict):
  __getattr__ = dict.__getitem__


@pytest.fixture(scope="module")
def setup():
  seg = fakes.make_teacher("seg", 13, 0)
  depth = fakes.make_teacher("depth", 1, 1)
  modules = (seg[0], depth[0])
  teacher_vars = {"seg": seg[1], "depth": depth[1]}
  spec = student_spec.StudentSpec(tuple(teacher_model.from_teacher_info(t, i[2])
                                        for t, i in zip(TASKS, (seg, depth))))
  trunk_vars = student_init.init_trunk_from_teachers(spec, teacher_vars, jax.random.key(0))
  fns = {t: tasks.projection_fn(t, k) for t, k in zip(TASKS, ("kl", "l1"))}
  images = np.random.default_rng(0).standard_normal(BATCH).astype(np.float32)
  s = dict(modules=modules, teacher_vars=teacher_vars, spec=spec, trunk_vars=trunk_vars,
           fns=fns, images=images)
  # One jitted block step shared by the tests (compiling it is the slow part).
  s["block_fn"], s["tx"] = _block_step(s)
  s["block_jit"] = jax.jit(s["block_fn"])
  return s


def _block_step(s, num_steps=10, schedule="random"):
  tx = optim.make_optimizer(_Cfg(OPT), num_steps)
  fn = functools.partial(steps.block_train_step, trunk=student_model.StudentTrunk(s["spec"]),
                         teacher_models=s["spec"].teachers, projection_fns=s["fns"],
                         lambdas=LAMBDAS, tx=tx, num_steps=num_steps, schedule=schedule)
  return fn, tx


def _decode(module, variables, f_k, indices, k):
  """The teacher SegNet's own decoder after k (the reference projection)."""
  return module.apply(variables, f_k, indices, k, False, method=segnet.SegNet.decode)[0]


def _tree_equal(a, b):
  return all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), a, b)))


def test_block_step_compiles_once_and_leaves_teachers_bit_identical(setup):
  s = setup
  tx, jitted = s["tx"], s["block_jit"]
  mesh = parallel.make_mesh()
  cache_before = jitted._cache_size()
  teachers = parallel.replicate(s["teacher_vars"], mesh)
  before = jax.device_get(teachers)
  state = parallel.replicate(optim.create_train_state(s["trunk_vars"], tx), mesh)
  rng = jax.random.key(1)
  seen_ks = set()
  for i in range(4):
    images = np.roll(s["images"], i, axis=0)
    state, metrics = jitted(state, teachers, parallel.global_batch({"image": images}, mesh),
                            rng)
    seen_ks.add((int(metrics["k_seg"]), int(metrics["k_depth"])))
  # One compilation (for this sharding) whatever branch points were drawn.
  assert jitted._cache_size() == cache_before + 1
  assert len(seen_ks) > 1  # the path really changed between steps
  assert int(state.step) == 4
  # Frozen tails are the teachers' own blocks: bit-identical after training.
  assert _tree_equal(before, jax.device_get(teachers))
  assert not _tree_equal(s["trunk_vars"]["params"], jax.device_get(state.params))


def test_no_gradient_reaches_teacher_parameters(setup):
  s = setup
  fn, tx = s["block_fn"], s["tx"]
  state = optim.create_train_state(s["trunk_vars"], tx)

  def loss_wrt_teachers(teachers):
    return fn(state, teachers, {"image": s["images"]}, jax.random.key(3))[1]["loss"]

  grads = jax.grad(loss_wrt_teachers)(s["teacher_vars"])
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree_util.tree_leaves(grads))


def test_selected_path_equals_direct_forward(setup):
  s = setup
  state = optim.create_train_state(s["trunk_vars"], s["tx"])
  rng = jax.random.key(7)
  _, metrics = s["block_jit"](state, s["teacher_vars"], {"image": s["images"]}, rng)
  # Direct composition at the drawn ks, without lax.switch.
  trunk = student_model.StudentTrunk(s["spec"])
  (gated, indices), _ = trunk.apply(s["trunk_vars"], s["images"], train=True,
                                    mutable=["batch_stats"])
  for i, (t, module) in enumerate(zip(TASKS, s["modules"])):
    k = int(metrics[f"k_{t}"])
    direct = _decode(module, s["teacher_vars"][t], gated[i][k], indices, k)
    target = module.apply(s["teacher_vars"][t], s["images"], train=False)[0]
    np.testing.assert_allclose(float(metrics[f"loss_{t}"]), float(s["fns"][t](direct, target)),
                               rtol=1e-5, atol=1e-6)


def test_sequential_schedule_advances_block_by_block():
  ks = [int(steps.draw_branch_points(jax.random.key(0), jnp.int32(i), 2, 10,
                                     "sequential")[0]) for i in range(10)]
  assert ks == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_every_image_of_the_batch_counts(setup):
  s = setup
  state = optim.create_train_state(s["trunk_vars"], s["tx"])
  jitted = s["block_jit"]
  rng = jax.random.key(5)  # same ks for every call: same state.step and rng
  base = float(jitted(state, s["teacher_vars"], {"image": s["images"]}, rng)[1]["loss"])
  for i in range(BATCH[0]):
    images = s["images"].copy()
    images[i] = np.random.default_rng(100 + i).standard_normal(BATCH[1:])
    changed = float(jitted(state, s["teacher_vars"], {"image": images}, rng)[1]["loss"])
    assert changed != base, f"image {i} does not influence the loss"


def test_multi_device_and_single_device_steps_agree(setup):
  """One step on 1 device vs the same global batch split over 8 (one image per device).

  With per-device BatchNorm statistics (no sync BN) each device would normalise a single
  image and the results would differ at O(1); float32 summation order alone moves them by
  ~1e-5 (more after several steps, when a near-tie in a max-pool flips).
  """
  s = setup
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = parallel.make_mesh(devices)
    state = parallel.replicate(optim.create_train_state(s["trunk_vars"], s["tx"]), mesh)
    teachers = parallel.replicate(s["teacher_vars"], mesh)
    batch = parallel.global_batch({"image": s["images"]}, mesh)
    results.append(jax.device_get(s["block_jit"](state, teachers, batch, jax.random.key(2))))
  (one, m_one), (many, m_many) = results
  np.testing.assert_allclose(m_one["loss"], m_many["loss"], rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves((one.params, one.batch_stats)),
                  jax.tree_util.tree_leaves((many.params, many.batch_stats))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_branch_losses_match_per_image_reference_and_ignore_padding(setup):
  s = setup
  mask = np.array([True] * 6 + [False] * 2)
  fn = jax.jit(functools.partial(steps.branch_losses, trunk=student_model.StudentTrunk(s["spec"]),
                                 teacher_models=s["spec"].teachers, projection_fns=s["fns"],
                                 lambdas=LAMBDAS))
  table, count = fn(s["trunk_vars"], s["teacher_vars"], {"image": s["images"], "mask": mask})
  assert float(count) == 6
  trunk = student_model.StudentTrunk(s["spec"])
  expected = np.zeros((2, 5))
  for n in range(6):  # padding images 6, 7 must not count
    image = s["images"][n:n + 1]
    gated, indices = trunk.apply(s["trunk_vars"], image, train=False)
    for i, (t, module) in enumerate(zip(TASKS, s["modules"])):
      target = module.apply(s["teacher_vars"][t], image, train=False)[0]
      for k in range(5):
        out = _decode(module, s["teacher_vars"][t], gated[i][k], indices, k)
        if t == "seg":  # KL(teacher || student), mean over pixels, written out in NumPy
          p = np.asarray(jax.nn.softmax(target, -1))
          logq = np.asarray(jax.nn.log_softmax(out, -1))
          expected[i, k] += np.mean(np.sum(p * (np.log(p) - logq), -1))
        else:
          expected[i, k] += np.mean(np.abs(np.asarray(out) - np.asarray(target)))
  np.testing.assert_allclose(np.asarray(table), expected, rtol=2e-4, atol=1e-6)
  # At initialisation the parsing path is a copy of the parsing teacher: zero loss at every k.
  np.testing.assert_allclose(np.asarray(table)[0], 0.0, atol=1e-5)


def test_finetune_step_compiles_once_and_trains_everything(setup):
  s = setup
  points = (1, 3)
  model = student_model.Student(s["spec"], points)
  variables = student_init.init_student_from_teachers(s["spec"], points, s["teacher_vars"],
                                                 trunk_variables=s["trunk_vars"],
                                                 rng=jax.random.key(0))
  tx = optim.make_optimizer(_Cfg(OPT), 10)
  jitted = jax.jit(functools.partial(steps.finetune_train_step, model=model,
                                     teacher_models=s["spec"].teachers,
                                     projection_fns=s["fns"], lambdas=LAMBDAS, tx=tx))
  state = optim.create_train_state(variables, tx)
  start = jax.device_get(state.params)
  for i in range(2):
    state, metrics = jitted(state, s["teacher_vars"],
                            {"image": np.roll(s["images"], i, axis=0)}, jax.random.key(0))
  assert jitted._cache_size() == 1
  # The loss is the λ-weighted sum of the per-task projection losses.
  np.testing.assert_allclose(float(metrics["loss"]),
                             float(metrics["loss_seg"]) + float(metrics["loss_depth"]),
                             rtol=1e-6)
  changed = jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, np.asarray(b)), start,
                                   jax.device_get(state.params))
  # Everything is trainable in step 4: the encoder, the gates and both branch tails moved.
  for name in ("down1", "gate_seg_1", "gate_depth_3", "branch_seg", "branch_depth"):
    assert any(jax.tree_util.tree_leaves(changed[name])), name


def test_projection_fn_uses_readout_for_depth_bins():
  extra = {"depth_bins": {"min_depth": 0.5, "max_depth": 8.0}}
  fn = tasks.projection_fn("depth", "l1", extra)
  rng = np.random.default_rng(0)
  a, b = (rng.standard_normal((1, 4, 4, 6)).astype(np.float32) for _ in range(2))
  centers = np.exp(np.linspace(np.log(0.5), np.log(8.0), 6))
  soft = lambda x: np.sum(np.exp(x) / np.exp(x).sum(-1, keepdims=True) * centers, -1)  # noqa
  np.testing.assert_allclose(float(fn(a, b)), np.mean(np.abs(soft(a) - soft(b))), rtol=1e-5)


def test_three_teachers_block_step_compiles_once_and_every_task_learns(setup):
  """T = 3 (option A): one compilation for every draw of (k_seg, k_depth, k_normals), and
  every task's loss sends a gradient into the shared trunk and its own gates."""
  s = setup
  normals = fakes.make_teacher("normals", 3, 2)
  spec = student_spec.StudentSpec(s["spec"].teachers +
                                  (teacher_model.from_teacher_info("normals", normals[2]),))
  teacher_vars = {**s["teacher_vars"], "normals": normals[1]}
  trunk_vars = student_init.init_trunk_from_teachers(spec, teacher_vars, jax.random.key(0))
  fns = {**s["fns"], "normals": tasks.projection_fn("normals", "cosine")}
  lambdas = {"seg": 1.0, "depth": 1.0, "normals": 1.0}
  tx = optim.make_optimizer(_Cfg(OPT), 10)
  step = jax.jit(functools.partial(
      steps.block_train_step, trunk=student_model.StudentTrunk(spec),
      teacher_models=spec.teachers, projection_fns=fns, lambdas=lambdas, tx=tx, num_steps=10))
  state = optim.create_train_state(trunk_vars, tx)
  images = {"image": s["images"][:2]}
  drawn = set()
  for i in range(3):
    state, metrics = step(state, teacher_vars, images, jax.random.key(i))
    drawn.add(tuple(int(metrics[f"k_{t}"]) for t in ("seg", "depth", "normals")))
  assert step._cache_size() == 1 and len(drawn) > 1
  # Each task alone, at fixed branch points (k = 1 for all: gates gate_*_1 are on the path).
  trunk = student_model.StudentTrunk(spec)
  for g, (name, model) in enumerate(zip(spec.teacher_names, spec.teachers)):
    def loss(params, g=g, model=model):
      gated, indices = trunk.apply({**trunk_vars, "params": params}, images["image"], False)
      out = model.project(teacher_vars[model.name], gated[g][1], indices, 1)
      target = model.outputs(teacher_vars[model.name], images["image"])
      return sum(fns[t](out[t], target[t]) for t in model.tasks)
    grads = jax.grad(loss)(trunk_vars["params"])
    size = lambda tree: sum(float(jnp.abs(x).sum()) for x in jax.tree_util.tree_leaves(tree))
    assert size(grads["down1"]) > 0 and size(grads["up5"]) > 0, name
    assert size(grads[f"gate_{name}_1"]) > 0, name
    others = [n for n in spec.teacher_names if n != name]
    assert all(size(grads[f"gate_{o}_1"]) == 0 for o in others), name
