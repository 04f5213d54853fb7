"""Tests for kajax.step_parallelism and the step options it reads: pmap vs jit, gradient
accumulation, bfloat16 compute; with tiny random VGG11 teachers (the shallowest preset: these
tests compile several full training steps).

References are built independently of the options under test: the default jit path for pmap,
a direct ``jax.value_and_grad`` of the student's loss per micro-batch for accumulation, and
the float32 run for bfloat16.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from kajax import (amalgamation_steps as steps, losses, optim, parallel, segnet,
                   step_parallelism, student_init, student_model, student_spec, tasks,
                   teacher_model)
from tests import fakes

TASKS = ("seg", "depth")
LAMBDAS = {"seg": 1.0, "depth": 1.0}
POINTS = (1, 3)
OPT = ml_collections.ConfigDict({"name": "sgd", "learning_rate": 0.05, "momentum": 0.9,
                                 "weight_decay": 1e-4, "schedule": "constant"})


@pytest.fixture(scope="module")
def setup():
  models = teacher_model.segnet_teachers(TASKS, (13, 1), arch="segnet_vgg11_bn",
                                         width_multiplier=1 / 16)
  teacher_vars = {m.name: fakes.random_variables(m.module(), seed)
                  for seed, m in enumerate(models)}
  spec = student_spec.StudentSpec(models)
  trunk_vars = student_init.init_trunk_from_teachers(spec, teacher_vars, jax.random.key(0))
  student_vars = student_init.init_student_from_teachers(
      spec, POINTS, teacher_vars, trunk_variables=trunk_vars, rng=jax.random.key(0))
  class_weights = np.linspace(0.3, 2.5, 13).astype(np.float32)
  fns = {"seg": tasks.projection_fn("seg", "kl", class_weights=class_weights),
         "depth": tasks.projection_fn("depth", "l1")}
  images = np.random.default_rng(0).standard_normal((16, 32, 64, 3)).astype(np.float32)
  # Host copies: the steps donate their state, the fixture must survive every test.
  student_vars = jax.device_get(student_vars)
  return dict(models=models, teacher_vars=teacher_vars, spec=spec, student_vars=student_vars,
              trunk_vars=jax.device_get(trunk_vars), fns=fns, images=images,
              class_weights=class_weights, steps={})


def _compiled(s, key, parallelism, make_step):
  """Compiles ``make_step(bn_axis_name)`` once per key (shared by the tests) and returns it
  with the optimizer it was built with."""
  if key not in s["steps"]:
    axis = step_parallelism.bn_axis_name({"parallelism": parallelism})
    s["steps"][key] = step_parallelism.compile_train_step(make_step(axis), parallelism,
                                                          batch_argnum=2)
  return s["steps"][key], optim.make_optimizer(OPT, 10)


def _finetune(s, parallelism="jit", dtype=None, accum=1, remat=False):
  """The compiled fine-tuning step."""
  return _compiled(s, ("finetune", parallelism, dtype, accum, remat), parallelism,
                   lambda axis: functools.partial(
                       steps.finetune_train_step,
                       model=student_model.Student(s["spec"], POINTS, bn_axis_name=axis,
                                                   dtype=dtype, remat=remat),
                       teacher_models=s["models"], projection_fns=s["fns"], lambdas=LAMBDAS,
                       tx=optim.make_optimizer(OPT, 10), grad_accum_steps=accum))


def _block(s, parallelism="jit"):
  """The compiled block-wise step (drawn path, random k per task and step)."""
  return _compiled(s, ("block", parallelism), parallelism,
                   lambda axis: functools.partial(
                       steps.block_train_step,
                       trunk=student_model.StudentTrunk(s["spec"], bn_axis_name=axis),
                       teacher_models=s["models"], projection_fns=s["fns"], lambdas=LAMBDAS,
                       tx=optim.make_optimizer(OPT, 10), num_steps=10))


def _run(step, tx, variables, s, num_steps, mesh, images=None, keep_metrics=False):
  state = parallel.replicate(optim.create_train_state(variables, tx), mesh)
  teachers = parallel.replicate(s["teacher_vars"], mesh)
  images = s["images"] if images is None else images
  history = []
  for i in range(num_steps):
    batch = parallel.global_batch({"image": np.roll(images, 2 * i, axis=0)}, mesh)
    state, metrics = step(state, teachers, batch, jax.random.key(4))
    history.append(jax.device_get(metrics))
  return jax.device_get(state), (history if keep_metrics else history[-1])


def _one_device():
  return parallel.make_mesh(jax.devices()[:1])


def _assert_trees_close(a, b, rtol, atol):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _assert_same_training(got, want, init, fraction):
  """|got - want| <= fraction * |want - init| leaf by leaf (max norms): the two runs made the
  same updates up to float round-off, which argmax ties in max-pooling amplify over steps.
  Different semantics (e.g. per-device BatchNorm, an unweighted pmean of a class-weighted
  loss) differ by O(100%). The 1e-5 floor covers conv biases before BatchNorm, whose true
  gradient is 0 (updates: noise)."""
  for g, w, i in zip(*(jax.tree_util.tree_leaves(t) for t in (got, want, init))):
    update = np.abs(np.asarray(w) - np.asarray(i)).max()
    assert np.abs(np.asarray(g) - np.asarray(w)).max() <= fraction * update + 1e-5


def test_pmap_reaches_the_parameters_of_jit(setup):
  """Two fine-tuning steps on 8 devices (2 images each): same parameters, BN statistics."""
  s = setup
  mesh = parallel.make_mesh()
  results = {mode: _run(*_finetune(s, mode), s["student_vars"], s, 2, mesh)
             for mode in step_parallelism.PARALLELISMS}
  (jit_state, jit_m), (pmap_state, pmap_m) = results["jit"], results["pmap"]
  np.testing.assert_allclose(pmap_m["loss"], jit_m["loss"], rtol=1e-4)
  _assert_same_training(pmap_state.params, jit_state.params, s["student_vars"]["params"], 0.05)
  _assert_same_training(pmap_state.batch_stats, jit_state.batch_stats,
                        s["student_vars"]["batch_stats"], 0.05)


def test_pmap_block_step_reaches_the_parameters_of_jit(setup):
  """Three block-wise steps (drawn path, a new k per task each step) on 8 devices: pmap and
  jit draw the same branch points and reach the same trunk, gates and BN statistics."""
  s = setup
  mesh = parallel.make_mesh()
  results = {mode: _run(*_block(s, mode), s["trunk_vars"], s, 3, mesh, keep_metrics=True)
             for mode in step_parallelism.PARALLELISMS}
  (jit_state, jit_h), (pmap_state, pmap_h) = results["jit"], results["pmap"]
  for name in ("k_seg", "k_depth"):
    assert [int(m[name]) for m in pmap_h] == [int(m[name]) for m in jit_h]
  drawn = {(int(m["k_seg"]), int(m["k_depth"])) for m in jit_h}
  assert len(drawn) > 1, drawn  # the steps really took different paths
  np.testing.assert_allclose([m["loss"] for m in pmap_h], [m["loss"] for m in jit_h],
                             rtol=1e-4)
  _assert_same_training(pmap_state.params, jit_state.params, s["trunk_vars"]["params"], 0.05)
  _assert_same_training(pmap_state.batch_stats, jit_state.batch_stats,
                        s["trunk_vars"]["batch_stats"], 0.05)


def test_remat_recomputes_each_encoder_block_and_gives_the_same_step(setup):
  """``remat=True``: each of the five encoder blocks is one rematerialised call in the step's
  program (so its activations are recomputed in the backward pass, not stored), and two
  updates equal the plain step's up to round-off."""
  s = setup
  plain = _run(*_finetune(s), s["student_vars"], s, 2, _one_device())
  remat = _run(*_finetune(s, remat=True), s["student_vars"], s, 2, _one_device())
  np.testing.assert_allclose(remat[1]["loss"], plain[1]["loss"], rtol=1e-5)
  _assert_same_training(remat[0].params, plain[0].params, s["student_vars"]["params"], 0.01)
  _assert_trees_close(remat[0].batch_stats, plain[0].batch_stats, 1e-4, 1e-5)

  def rematerialised_calls(use_remat):
    model = student_model.Student(s["spec"], POINTS, remat=use_remat)
    v = s["student_vars"]

    def loss(params):
      (out, _), _ = model.apply({"params": params, "batch_stats": v["batch_stats"]},
                                s["images"], train=True, mutable=["batch_stats"])
      return sum(jnp.sum(o ** 2) for o in out.values())
    jaxpr = jax.make_jaxpr(jax.grad(loss))(v["params"])
    # (JAX names the primitive remat2 or checkpoint, depending on the version.)
    return sum(e.primitive.name.startswith(("remat", "checkpoint")) for e in jaxpr.jaxpr.eqns)

  assert rematerialised_calls(False) == 0
  assert rematerialised_calls(True) == len(segnet.ENCODER_BLOCKS)


def test_two_micro_batches_of_8_equal_one_batch_of_16(setup):
  """Micro-batch i holds images i, i+2, ...; with every image twice in a row (0,0,1,1,...)
  both micro-batches are the same 8 images and have the batch's BatchNorm statistics, so
  accumulation must give one step on the batch of 16 exactly (up to round-off)."""
  s = setup
  images = np.repeat(s["images"][:8], 2, axis=0)
  a, ma = _run(*_finetune(s, accum=1), s["student_vars"], s, 1, _one_device(), images)
  b, mb = _run(*_finetune(s, accum=2), s["student_vars"], s, 1, _one_device(), images)
  np.testing.assert_allclose(mb["loss"], ma["loss"], rtol=1e-5)
  _assert_same_training(b.params, a.params, s["student_vars"]["params"], 0.01)
  _assert_trees_close(b.batch_stats, a.batch_stats, 1e-4, 1e-5)


def test_accumulation_averages_the_micro_batch_gradients(setup):
  """Different micro-batches: the step equals averaging two independent value_and_grads."""
  s = setup
  step, tx = _finetune(s, accum=2)
  state0 = optim.create_train_state(s["student_vars"], tx)
  got, metrics = _run(step, tx, s["student_vars"], s, 1, _one_device())
  model = student_model.Student(s["spec"], POINTS)

  @jax.jit
  def reference(micro):
    targets = [m.module().apply(s["teacher_vars"][m.name], micro, train=False)[0]
               for m in s["models"]]

    def loss(params):
      (out, _), new = model.apply({"params": params, "batch_stats": state0.batch_stats},
                                  micro, train=True, mutable=["batch_stats"])
      kl = losses.kl_projection(out["seg"], targets[0], class_weights=s["class_weights"])
      return kl + jnp.mean(jnp.abs(out["depth"] - targets[1])), new["batch_stats"]
    return jax.value_and_grad(loss, has_aux=True)(state0.params)

  parts = [reference(s["images"][i::2]) for i in range(2)]  # micro-batch i: images i, i+2, ...
  mean = lambda a, b: jax.tree_util.tree_map(lambda x, y: (x + y) / 2, a, b)  # noqa: E731
  (loss0, stats0), grads0 = parts[0]
  (loss1, stats1), grads1 = parts[1]
  updates, _ = tx.update(mean(grads0, grads1), state0.opt_state, state0.params)
  want = jax.tree_util.tree_map(jnp.add, state0.params, updates)
  np.testing.assert_allclose(float(metrics["loss"]), float(loss0 + loss1) / 2, rtol=1e-5)
  assert abs(float(loss0) - float(loss1)) > 1e-4  # the micro-batches really differ
  _assert_same_training(got.params, want, state0.params, 0.01)
  _assert_trees_close(got.batch_stats, mean(stats0, stats1), 1e-4, 1e-5)


def test_bfloat16_compute_keeps_float32_state_and_stays_close_to_float32(setup):
  """Three steps with bfloat16 convolutions (student and teachers) vs float32."""
  s = setup
  a, ma = _run(*_finetune(s), s["student_vars"], s, 3, _one_device())
  b, mb = _run(*_finetune(s, dtype=jnp.bfloat16), s["student_vars"], s, 3, _one_device())
  for tree in (b.params, b.batch_stats, b.opt_state):
    assert {x.dtype for x in jax.tree_util.tree_leaves(tree) if x.ndim} == {np.dtype("float32")}
  assert mb["loss"].dtype == np.float32 and np.isfinite(mb["loss"])
  # Stated bounds (bfloat16 keeps 8 mantissa bits, ~0.4% per rounding), on the metrics of a
  # student that learns its teachers -- how often it picks the parsing teacher's class, how
  # far its depth is from the depth teacher's -- after 3 steps: within 2 points and 5%
  # of float32's; the loss within 10%; class probabilities within 0.01 on average.
  np.testing.assert_allclose(mb["loss"], ma["loss"], rtol=0.1)
  model = student_model.Student(s["spec"], POINTS)
  out_a = model.apply(a.variables, s["images"], train=False)[0]
  out_b = model.apply(b.variables, s["images"], train=False)[0]
  seg_t, depth_t = (m.module().apply(s["teacher_vars"][m.name], s["images"], train=False)[0]
                    for m in s["models"])
  agree = lambda out: np.mean(np.argmax(out["seg"], -1) == np.argmax(seg_t, -1))  # noqa
  depth_l1 = lambda out: np.mean(np.abs(out["depth"] - depth_t))  # noqa: E731
  assert abs(agree(out_b) - agree(out_a)) <= 0.02, (agree(out_a), agree(out_b))
  np.testing.assert_allclose(depth_l1(out_b), depth_l1(out_a), rtol=0.05)
  probs = lambda out: np.asarray(jax.nn.softmax(out["seg"], -1))  # noqa: E731
  assert np.mean(np.abs(probs(out_b) - probs(out_a))) <= 0.01


def test_check_config_names_the_bad_field():
  c = ml_collections.ConfigDict({"compute_dtype": "float16", "parallelism": "jit",
                                 "grad_accum_steps": 1, "batch_size": 8})
  with pytest.raises(ValueError, match="compute_dtype"):
    step_parallelism.check_config(c, devices=8)
  c.compute_dtype, c.parallelism = "bfloat16", "vmap"
  with pytest.raises(ValueError, match="parallelism"):
    step_parallelism.check_config(c, devices=8)
  c.parallelism, c.grad_accum_steps = "jit", 3
  with pytest.raises(ValueError, match="grad_accum_steps"):
    step_parallelism.check_config(c, devices=8)
  c.grad_accum_steps, c.batch_size = 2, 16
  step_parallelism.check_config(c, devices=8)


def test_auto_compute_dtype_is_bfloat16_on_accelerators_only():
  c = ml_collections.ConfigDict({"compute_dtype": "auto"})
  assert {b: step_parallelism.compute_dtype_name(c, b) for b in ("cpu", "gpu", "tpu")} == {
      "cpu": "float32", "gpu": "bfloat16", "tpu": "bfloat16"}
  assert step_parallelism.compute_dtype(c) is None  # This machine is a CPU: float32 params.
  c.compute_dtype = "float32"  # An explicit choice wins on every backend.
  assert step_parallelism.compute_dtype_name(c, "tpu") == "float32"
  c.compute_dtype = "bfloat16"
  assert step_parallelism.compute_dtype_name(c, "cpu") == "bfloat16"
  assert step_parallelism.compute_dtype(c) == jnp.bfloat16
