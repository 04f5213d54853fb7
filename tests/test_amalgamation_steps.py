"""Tests for kajax.amalgamation_steps: the compiled steps of block-wise amalgamation, branch
search and fine-tuning, on 8 fake CPU devices with tiny random teachers.

Expected values come from composing the teachers and the student directly (``SegNet.decode``,
``Student.apply``) and from NumPy loops, never from the steps under test.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kajax import amalgamation_steps as steps
from kajax import optim, parallel, segnet, student_init, student_model, student_spec, tasks
from kajax import teacher_model
from kajax.teacher_views import TeacherViews
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


def _block_step(s, num_steps=10, schedule="random", teacher_flip=True):
  """The shared block step trains on flip-averaged teacher targets (the demo's setting)."""
  tx = optim.make_optimizer(_Cfg(OPT), num_steps)
  fn = functools.partial(steps.block_train_step, trunk=student_model.StudentTrunk(s["spec"]),
                         teacher_models=s["spec"].teachers, projection_fns=s["fns"],
                         lambdas=LAMBDAS, tx=tx, num_steps=num_steps, schedule=schedule,
                         target_views=TeacherViews(flip=teacher_flip))
  return fn, tx


def _decode(module, variables, f_k, indices, k):
  """The teacher SegNet's own decoder after k (the reference projection)."""
  return module.apply(variables, f_k, indices, k, False, method=segnet.SegNet.decode)[0]


def _tree_equal(a, b):
  return all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), a, b)))


def test_block_step_compiles_once_whatever_the_branch_points(setup):
  s = setup
  tx, jitted = s["tx"], s["block_jit"]
  mesh = parallel.make_mesh()
  cache_before = jitted._cache_size()
  teachers = parallel.replicate(s["teacher_vars"], mesh)
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
  assert not _tree_equal(s["trunk_vars"]["params"], jax.device_get(state.params))


def _kernel_count(params):
  return sum(1 for x in jax.tree_util.tree_leaves(params) if x.ndim == 4 and x.shape[:2] == (3, 3))


def test_teachers_are_not_trained_optimiser_state_and_hlo(setup):
  """Teachers are neither in the optimiser state nor given weight gradients in the HLO."""
  s = setup
  state = optim.create_train_state(s["trunk_vars"], s["tx"])
  # SGD with momentum keeps one trace per trainable parameter: exactly the trunk's.
  trace_leaves = jax.tree_util.tree_leaves(state.opt_state)
  param_leaves = jax.tree_util.tree_leaves(state.params)
  assert sorted(x.size for x in trace_leaves if x.ndim) == sorted(x.size for x in param_leaves)
  # Every 3x3 weight gradient is kajax.conv's kh=3 products contracting over the pixels
  # (dimension 0 of both operands). The compiled step has exactly those of the trainable
  # encoder + trunk convolutions; none for the frozen teacher tails inside the lax.switch.
  hlo = jax.jit(s["block_fn"]).lower(state, s["teacher_vars"], {"image": s["images"]},
                                     jax.random.key(0)).compile().as_text()
  weight_grads = re.findall(r" dot\([^)]*\).*lhs_contracting_dims=\{0\}, "
                            r"rhs_contracting_dims=\{0\}", hlo)
  trainable = _kernel_count(s["trunk_vars"]["params"])
  assert trainable == 13 + 3 + 3 + 3 + 2  # VGG16 encoder + up5, up4, up3, up2
  assert _kernel_count(s["teacher_vars"]["seg"]["params"]) == 26  # frozen, inside the switch
  assert len(weight_grads) == 3 * trainable


def test_no_gradient_reaches_teacher_parameters(setup):
  s = setup
  fn, tx = s["block_fn"], s["tx"]
  state = optim.create_train_state(s["trunk_vars"], tx)

  def loss_wrt_teachers(teachers):
    return fn(state, teachers, {"image": s["images"]}, jax.random.key(3))[1]["loss"]

  grads = jax.grad(loss_wrt_teachers)(s["teacher_vars"])
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree_util.tree_leaves(grads))


def test_selected_path_equals_direct_forward(setup):
  """The step's per-task loss is the projection of the drawn path against the teacher's
  flip-averaged output (TeacherViews(flip=True)), not against its plain output."""
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
    plain = np.asarray(module.apply(s["teacher_vars"][t], s["images"], train=False)[0])
    back = _mirror(module.apply(s["teacher_vars"][t], _mirror(s["images"]), train=False)[0])
    expected = float(s["fns"][t](direct, (plain + back) / 2))
    np.testing.assert_allclose(float(metrics[f"loss_{t}"]), expected, rtol=1e-5, atol=1e-6)
    assert abs(float(s["fns"][t](direct, plain)) - expected) > 1e-4 * abs(expected)


def test_drawn_path_equals_the_full_trunk_and_switch(setup):
  """Computing only the drawn path gives the loss and gradients of the full formulation
  (every trunk block and gate, then lax.switch over the tails), and leaves the BatchNorm
  statistics of trunk blocks the step skipped untouched."""
  s = setup
  trunk = student_model.StudentTrunk(s["spec"])
  models = s["spec"].teachers
  # Gates away from identity, so that their gradients are not trivially symmetric.
  variables = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.05 if "gate" in jax.tree_util.keystr(p) else x, s["trunk_vars"])
  images = s["images"][:4]
  square = lambda outs: sum(jnp.mean(o ** 2) for o in outs.values())  # noqa: E731

  def full(params, ks_arr):
    (gated, indices), mutated = trunk.apply({"params": params,
                                             "batch_stats": variables["batch_stats"]},
                                            images, train=True, mutable=["batch_stats"])
    outs = {}
    for g, m in enumerate(models):
      outs.update(student_model.switch_tail(g, ks_arr[g], gated, indices, m,
                                            s["teacher_vars"][m.name]))
    return square(outs), mutated["batch_stats"]

  def drawn(params, ks_arr):
    outs, stats = steps.drawn_path_outputs(trunk, params, variables["batch_stats"], images,
                                           ks_arr, s["teacher_vars"], models)
    return square(outs), stats

  # Branch points are traced: one compilation of each form serves every draw.
  full_fn = jax.jit(jax.value_and_grad(full, has_aux=True))
  drawn_fn = jax.jit(jax.value_and_grad(drawn, has_aux=True))
  for ks in [(0, 0), (1, 3), (4, 2)]:  # no trunk block, some, all of them
    ks_arr = jnp.asarray(ks, jnp.int32)
    (want, want_stats), want_grads = full_fn(variables["params"], ks_arr)
    (got, got_stats), got_grads = drawn_fn(variables["params"], ks_arr)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    # Some gradients are zero in exact arithmetic (a conv bias followed by BatchNorm) and
    # only float32 rounding noise here (~1e-7, varying with the threads' summation order),
    # which no relative tolerance fits: the absolute one is 1e-4 of the largest gradient
    # (0.01-0.2 here), far below what a wrong path would change.
    scale = max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(want_grads))
    for a, b in zip(jax.tree_util.tree_leaves(got_grads),
                    jax.tree_util.tree_leaves(want_grads)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4 * scale)
    for j, block in enumerate(student_model.TRUNK_BLOCKS):
      expected = want_stats[block] if j < max(ks) else variables["batch_stats"][block]
      for a, b in zip(jax.tree_util.tree_leaves(got_stats[block]),
                      jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


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


def test_branch_losses_pool_the_class_weighted_training_loss_over_the_split(setup):
  """The table is sum(w * KL) / sum(w) over every pixel of the split's real images (the
  training loss of the split as one batch), computed here in NumPy across two batches."""
  s = setup
  # Heavy weights on classes the random teacher rarely predicts: the images' total weights
  # then differ a lot, and so do the two ways of pooling over images.
  class_weights = np.full(13, 0.1, np.float32)
  class_weights[[1, 12]] = 30.0
  fns = {"seg": tasks.projection_fn("seg", "kl", class_weights=class_weights),
         "depth": s["fns"]["depth"]}
  lambdas = {"seg": 1.0, "depth": 0.5}
  models = s["spec"].teachers
  fn = jax.jit(functools.partial(steps.branch_losses, trunk=student_model.StudentTrunk(s["spec"]),
                                 teacher_models=models, projection_fns=fns))
  # Perturbed gates so the parsing path is not an exact copy of its teacher.
  trunk_vars = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.3 if "gate" in jax.tree_util.keystr(p) else x, s["trunk_vars"])
  offsets = np.linspace(-2, 2, BATCH[0])[:, None, None, None]
  batches = [s["images"],
             (3 * np.random.default_rng(5).standard_normal(BATCH) + offsets).astype(np.float32)]
  masks = [np.ones(8, bool), np.array([True] * 3 + [False] * 5)]
  parts = [fn(trunk_vars, s["teacher_vars"], {"image": b, "mask": m})
           for b, m in zip(batches, masks)]
  totals = jax.tree_util.tree_map(lambda *x: sum(np.asarray(v, np.float64) for v in x), *parts)
  assert totals["images"] == 11
  table = steps.branch_table(totals, models, lambdas)
  trunk = student_model.StudentTrunk(s["spec"])
  num, den = np.zeros((2, 5)), np.zeros(2)
  image_means = np.zeros((2, 5))  # the wrong pooling: a mean of per-image means
  for images, mask in zip(batches, masks):
    real = images[mask]  # padding images must not count
    gated, indices = trunk.apply(trunk_vars, real, train=False)
    for i, (t, module) in enumerate(zip(TASKS, s["modules"])):
      target = np.asarray(module.apply(s["teacher_vars"][t], real, train=False)[0], np.float64)
      w = class_weights[target.argmax(-1)] if t == "seg" else np.ones(target.shape[:3])
      den[i] += w.sum()
      for k in range(5):
        out = np.asarray(_decode(module, s["teacher_vars"][t], gated[i][k], indices, k),
                         np.float64)
        if t == "seg":  # KL(teacher || student) per pixel, written out in NumPy
          logp = target - np.log(np.exp(target).sum(-1, keepdims=True))
          logq = out - np.log(np.exp(out).sum(-1, keepdims=True))
          per_pixel = np.sum(np.exp(logp) * (logp - logq), -1)
        else:
          per_pixel = np.abs(out - target)[..., 0]
        num[i, k] += np.sum(w * per_pixel)
        image_means[i, k] += np.sum(np.sum(w * per_pixel, (1, 2)) / np.sum(w, (1, 2)))
  expected = num / den[:, None] * np.array([[1.0], [0.5]])
  np.testing.assert_allclose(table, expected, rtol=2e-4, atol=1e-6)
  # A mean of per-image means differs (the images' total weights differ): the test can tell.
  assert np.abs(image_means[0] / 11 - table[0]).max() > 1e-2 * np.abs(table[0]).max()


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


def _mirror(a):
  return np.asarray(a)[:, :, ::-1]  # NHWC: axis 2 is the width


def test_flip_averaged_teacher_targets(setup):
  """Y_t over the mirror pair = (teacher(x) + mirror(teacher(mirror(x)))) / 2, each view run on
  its own here; a normals teacher's mirrored x component changes sign."""
  normals = fakes.make_teacher("normals", 3, 2)
  models = setup["spec"].teachers + (teacher_model.from_teacher_info("normals", normals[2]),)
  modules = setup["modules"] + (normals[0],)
  variables = dict(setup["teacher_vars"], normals=normals[1])
  x = setup["images"]
  got = steps.teacher_outputs(variables, x, models, views=TeacherViews(flip=True))
  for t, m in zip(("seg", "depth", "normals"), modules):
    plain = np.asarray(m.apply(variables[t], x, train=False)[0])
    back = _mirror(m.apply(variables[t], _mirror(x), train=False)[0])
    if t == "normals":
      back = back * np.array([-1.0, 1.0, 1.0])
    np.testing.assert_allclose(np.asarray(got[t]), (plain + back) / 2, rtol=1e-4, atol=1e-5)
    assert not np.allclose(plain, back, atol=1e-3)  # the two views do differ
  single = steps.teacher_outputs(variables, x, models)
  np.testing.assert_allclose(np.asarray(single["depth"]),
                             np.asarray(modules[1].apply(variables["depth"], x)[0]), rtol=1e-5)
