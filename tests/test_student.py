"""Tests for kajax.student_model (+ student_spec, student_init, SegNet teachers of
kajax.teacher_model), kajax.gates and kajax.flops.

Tiny teachers (width 1/8, 64x96 images, float32) with perturbed BatchNorm statistics and
scales, so copying a block without its statistics would show. Expected values come from
running the teachers themselves (``SegNet.encode`` / ``SegNet.decode``) and from parameter
counts computed by hand from the conv shapes; full-width models only go through
``jax.eval_shape``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kajax import flops, segnet, teacher_model
from tests import fakes
from kajax.gates import ChannelGate
from kajax.segnet import DECODER_BLOCKS, SegNet
from kajax.student_init import (count_student_params, init_student_from_teachers,
                                init_trunk_from_teachers, variable_shapes)
from kajax.student_model import Student, StudentTrunk, switch_tail
from kajax.student_spec import StudentSpec

WIDTH = 1 / 8
IMAGE = (2, 64, 96, 3)
TOL = dict(rtol=1e-5, atol=1e-5)

# --- hand parameter counts (docs/method.md §1: VGG16-BN SegNet) ---------------------------
VGG16_CONVS = (2, 2, 3, 3, 3)


def conv_params(cin, cout, bn=True):
  """3x3 conv with bias, plus BatchNorm scale and bias (running stats are not params)."""
  return 9 * cin * cout + cout + (2 * cout if bn else 0)


def encoder_params(widths):
  total, cin = 0, 3
  for level, n in enumerate(VGG16_CONVS):
    for _ in range(n):
      total += conv_params(cin, widths[level])
      cin = widths[level]
  return total


def decoder_block_params(level, widths, num_outputs, head="conv"):
  """Block up{level+1}: n-1 convs keeping widths[level], then one to the next width."""
  c, n = widths[level], VGG16_CONVS[level]
  out = num_outputs if level == 0 else widths[level - 1]
  bn = not (level == 0 and head == "conv")
  return (n - 1) * conv_params(c, c, bn) + conv_params(c, out, bn)


def gate_params(c):
  return 2 * c * max(16, c // 4)


def hand_student_params(widths, num_outputs, ks, gates=True):
  """Encoder + trunk blocks before max(k) + each task's blocks after its k + its gate."""
  total = encoder_params(widths)
  for j in range(max(ks)):  # DECODER_BLOCKS[j] = up{5-j}, level 4-j
    total += decoder_block_params(4 - j, widths, 1)
  for c, k in zip(num_outputs, ks):
    total += sum(decoder_block_params(4 - j, widths, c) for j in range(k, 5))
    # f_k has widths[4-k] channels (f_0 = down5, f_1 = up5 = 512, ..., f_4 = up2 = 64).
    total += gate_params(widths[4 - k]) if gates else 0
  return total


FULL = (64, 128, 256, 512, 512)
TINY = (8, 16, 32, 64, 64)


# --- fixtures -----------------------------------------------------------------------------
def make_teacher(num_outputs, seed):
  """A tiny teacher with random weights and non-default BN statistics (``tests.fakes``)."""
  module = SegNet(num_outputs, width_multiplier=WIDTH)
  variables = jax.tree_util.tree_map(jnp.asarray, fakes.random_variables(module, seed))
  return module, variables


@pytest.fixture(scope="module")
def teachers():
  return {"seg": make_teacher(13, 0), "depth": make_teacher(1, 1),
          "normals": make_teacher(3, 2)}


@pytest.fixture(scope="module")
def image():
  return jax.random.normal(jax.random.key(42), IMAGE)


@pytest.fixture(scope="module")
def seg_reference(teachers, image):
  """The seg teacher's output and its shared features f_0..f_4 and indices, by SegNet."""
  module, variables = teachers["seg"]

  @jax.jit  # one compilation instead of one per op
  def run(variables, image):
    f0, indices, _ = module.apply(variables, image, False, method=SegNet.encode)
    out, feats = module.apply(variables, f0, indices, 0, False, method=SegNet.decode)
    return out, [f0] + [feats[name] for name in DECODER_BLOCKS[:4]], indices
  return run(variables, image)


OUTPUTS = {"seg": 13, "depth": 1, "normals": 3}


def models(tasks, width=WIDTH):
  return teacher_model.segnet_teachers(tasks, [OUTPUTS[t] for t in tasks],
                                       width_multiplier=width)


def spec2(gate_form="identity"):
  return StudentSpec(models(("seg", "depth")), gate_form)


def teacher_tail(task, variables, f_k, indices, k):
  """Teacher ``task``'s projection of f_k (its SegNetTeacher model)."""
  return teacher_model.SegNetTeacher(task, task, OUTPUTS[task], width_multiplier=WIDTH).project(
      variables, f_k, indices, k)[task]


def tail_reference(teachers, task, seg_reference, k):
  """Teacher ``task``'s blocks after k on the seg teacher's f_k and indices."""
  module, variables = teachers[task]
  _, shared, indices = seg_reference
  return module.apply(variables, shared[k], indices, k, False, method=SegNet.decode)[0]


@pytest.fixture(scope="module")
def trunk(teachers, image):
  spec = spec2()
  variables = init_trunk_from_teachers(spec, {t: teachers[t][1] for t in spec.tasks},
                                       jax.random.key(0))
  gated, indices = jax.jit(lambda v, x: StudentTrunk(spec).apply(v, x, False))(variables, image)
  return spec, variables, gated, indices


# --- initialisation reproduces the teachers -----------------------------------------------
def test_blockwise_trunk_reproduces_teachers_at_every_k(teachers, seg_reference, trunk):
  spec, _, gated, indices = trunk
  assert len(gated) == 2 and all(len(g) == 5 for g in gated)
  for k in range(5):
    for i, task in enumerate(spec.tasks):
      got = teacher_tail(task, teachers[task][1], gated[i][k], indices, k)
      if task == "seg":
        np.testing.assert_allclose(got, seg_reference[0], **TOL)
      np.testing.assert_allclose(got, tail_reference(teachers, task, seg_reference, k), **TOL)


@pytest.mark.parametrize("ks", [(0, 2), (1, 1), (2, 4), (3, 0), (4, 3)])
def test_fixed_student_reproduces_teachers(teachers, image, seg_reference, ks):
  spec = spec2()
  variables = init_student_from_teachers(spec, ks, {t: teachers[t][1] for t in spec.tasks},
                                         rng=jax.random.key(1))
  outputs, features = Student(spec, ks).apply(variables, image, False)
  np.testing.assert_allclose(outputs["seg"], seg_reference[0], **TOL)
  np.testing.assert_allclose(outputs["depth"],
                             tail_reference(teachers, "depth", seg_reference, ks[1]), **TOL)
  assert outputs["depth"].shape == IMAGE[:3] + (1,)
  assert f"depth/{DECODER_BLOCKS[ks[1]]}" in features and "gated_seg" in features


def test_trunk_variables_carry_over_to_fixed_student(teachers, trunk):
  spec, trunk_variables, _, _ = trunk
  # Pretend block-wise training changed the trunk and the gates.
  trained = jax.tree_util.tree_map(lambda x: x + 0.25, trunk_variables)
  variables = init_student_from_teachers(spec, (1, 3), {t: teachers[t][1] for t in spec.tasks},
                                         trunk_variables=trained)
  for collection, block in (("params", "down1"), ("batch_stats", "up5"),
                            ("params", "gate_depth_3")):
    for a, b in zip(jax.tree_util.tree_leaves(variables[collection][block]),
                    jax.tree_util.tree_leaves(trained[collection][block])):
      np.testing.assert_array_equal(a, b)
  # Branch blocks still come from each task's teacher.
  branch_stats = variables["batch_stats"]["branch_depth"]["up2"]["layer0"]["bn"]
  teacher_stats = teachers["depth"][1]["batch_stats"]["up2"]["layer0"]["bn"]
  np.testing.assert_array_equal(branch_stats["var"], teacher_stats["var"])


# --- switch over branch points ------------------------------------------------------------
def test_switch_tail_traces_once_and_matches_direct_call(teachers, trunk):
  spec, _, gated, indices = trunk
  variables = teachers["depth"][1]
  traces = []

  @jax.jit
  def run(k, gated, indices, variables):
    traces.append(1)  # Python side effect: runs once per trace
    return switch_tail(1, k, gated, indices, spec.teachers[1], variables)

  for k in range(5):
    direct = teacher_tail("depth", variables, gated[1][k], indices, k)
    got = run(jnp.int32(k), gated, indices, variables)
    assert set(got) == {"depth"}
    np.testing.assert_allclose(got["depth"], direct, **TOL)
  assert len(traces) == 1


def test_gradients_reach_trunk_and_selected_gate_only(teachers, image, trunk):
  spec, variables, gated, indices = trunk
  teacher_vars = teachers["depth"][1]

  def loss(params):
    gated, indices = StudentTrunk(spec).apply({**variables, "params": params}, image, False)
    # The direct tail (not the switch) keeps the backward compile small; the switch's forward
    # equals it for every k (test above).
    return jnp.sum(teacher_tail("depth", teacher_vars, gated[1][2], indices, 2) ** 2)

  grads = jax.jit(jax.grad(loss))(variables["params"])
  norm = lambda tree: sum(np.abs(np.asarray(x)).sum() for x in jax.tree_util.tree_leaves(tree))
  assert norm(grads["down1"]) > 0 and norm(grads["up4"]) > 0
  assert norm(grads["gate_depth_2"]["expand"]) > 0  # zero-initialised, still learns
  assert norm(grads["up3"]) == 0  # k=2 shares up5, up4 only
  assert norm(grads["gate_depth_1"]) == 0 and norm(grads["gate_seg_2"]) == 0
  # The teacher is frozen (stop_gradient inside teacher_tail); k=4 keeps this cheap.
  teacher_grads = jax.grad(lambda v: jnp.sum(teacher_tail("depth", v, gated[1][4], indices,
                                                          4)))(teacher_vars)
  assert norm(teacher_grads) == 0


# --- pruning and parameter counts ---------------------------------------------------------
def test_pruned_student_param_tree_and_count(teachers):
  spec = spec2()
  variables = init_student_from_teachers(spec, (2, 3), {t: teachers[t][1] for t in spec.tasks},
                                         rng=jax.random.key(0))
  params = variables["params"]
  # max k = 3: the trunk holds up5..up3; up2 and up1 exist only inside the branches.
  assert set(params) == {"down1", "down2", "down3", "down4", "down5", "up5", "up4", "up3",
                         "gate_seg_2", "gate_depth_3", "branch_seg", "branch_depth"}
  assert set(params["branch_seg"]) == {"up3", "up2", "up1"}
  assert set(params["branch_depth"]) == {"up2", "up1"}
  assert set(variables["batch_stats"]["branch_seg"]) == {"up3", "up2"}  # 'conv' head: no BN
  expected = hand_student_params(TINY, (13, 1), (2, 3))
  assert segnet.count_params(params) == expected
  assert count_student_params(spec, (2, 3)) == expected


def test_full_width_param_counts():
  assert encoder_params(FULL) + sum(decoder_block_params(l, FULL, 13) for l in range(5)) \
      == 29_450_381  # docs/method.md §1
  spec = StudentSpec(models(("seg", "depth"), width=1.0))
  teacher_total = sum(segnet.count_params(variable_shapes(t.module())["params"])
                      for t in spec.teachers)
  assert teacher_total == 58_893_838
  published = {1: 37.1e6, 2: 31.2e6, 3: 29.7e6}
  for k, size in published.items():
    for ks in ((k, k), (k, 4), (4, k)):  # for two tasks only min(k) matters
      assert count_student_params(spec, ks) == hand_student_params(FULL, (13, 1), ks)
      no_gates = count_student_params(spec, ks, include_gates=False)
      assert no_gates == hand_student_params(FULL, (13, 1), ks, gates=False)
      # The published sizes are the blocks alone (gates add 262,144 at k=1 -> 37.35M).
      assert abs(no_gates - size) < 0.05e6


# --- gates --------------------------------------------------------------------------------
def test_gate_forms():
  x = jax.nn.relu(jax.random.normal(jax.random.key(3), (2, 6, 10, 64))) + 0.1
  gate = ChannelGate("identity")
  out = gate.apply(gate.init(jax.random.key(0), x), x)
  np.testing.assert_array_equal(out, x)  # exactly 1 at init
  port = ChannelGate("port")
  pv = port.init(jax.random.key(0), x)
  assert pv["params"]["reduce"]["kernel"].shape == (1, 1, 64, 16)
  ratio = port.apply(pv, x) / x
  assert float(ratio.min()) > 0 and float(ratio.max()) < 1
  assert abs(float(ratio.mean()) - 0.5) < 0.1
  # Global pooling: a spatial permutation (non-square map) leaves the gate unchanged.
  perm = np.random.default_rng(0).permutation(60)
  xp = x.reshape(2, 60, 64)[:, perm].reshape(x.shape)
  np.testing.assert_allclose(port.apply(pv, xp) / xp, ratio, rtol=1e-5)
  with pytest.raises(ValueError, match="gate_form"):
    ChannelGate("half").init(jax.random.key(0), x)


# --- three tasks --------------------------------------------------------------------------
def test_three_tasks(teachers, image, seg_reference):
  spec = StudentSpec(models(("seg", "depth", "normals")))
  assert spec.num_outputs() == OUTPUTS and spec.trunk_task == "seg"
  ks = (1, 2, 4)
  variables = init_student_from_teachers(spec, ks, {t: teachers[t][1] for t in spec.tasks},
                                         rng=jax.random.key(0))
  outputs, _ = Student(spec, ks).apply(variables, image, False)
  np.testing.assert_allclose(outputs["seg"], seg_reference[0], **TOL)
  for task, k in (("depth", 2), ("normals", 4)):
    np.testing.assert_allclose(outputs[task], tail_reference(teachers, task, seg_reference, k),
                               **TOL)
  assert count_student_params(spec, ks) == hand_student_params(TINY, (13, 1, 3), ks)
  trunk_vars = init_trunk_from_teachers(spec, {"seg": teachers["seg"][1]}, jax.random.key(0))
  gated, _ = StudentTrunk(spec).apply(trunk_vars, image, False)
  assert [len(g) for g in gated] == [5, 5, 5]
  assert gated[2][3].shape == (2, 16, 24, 16)  # f_3 = up3 output: H/4, 16 channels


# --- errors -------------------------------------------------------------------------------
def test_clear_errors(teachers):
  seg, = models(("seg",))
  with pytest.raises(ValueError, match=r"seg \(segnet\): segnet_vgg16_bn x0\.125, depth "
                                       r"\(segnet\): segnet_vgg16_bn x1\.0"):
    StudentSpec((seg,) + models(("depth",), width=1.0))
  vgg13 = teacher_model.SegNetTeacher("depth", "depth", 1, arch="segnet_vgg13_bn",
                                      width_multiplier=WIDTH)
  with pytest.raises(ValueError, match="segnet_vgg13_bn"):
    StudentSpec((seg, vgg13))
  with pytest.raises(ValueError, match="Task 'seg' is given twice: by teacher 'seg' and by "
                                       "teacher 'seg2'"):
    StudentSpec((seg, teacher_model.SegNetTeacher("seg2", "seg", 13, width_multiplier=WIDTH)))
  with pytest.raises(ValueError, match="not unique"):
    StudentSpec((seg, seg))
  spec = spec2()
  variables = {t: teachers[t][1] for t in spec.tasks}
  with pytest.raises(ValueError, match="Branch point 5 of teacher 'depth'"):
    init_student_from_teachers(spec, (1, 5), variables, rng=jax.random.key(0))
  with pytest.raises(ValueError, match="one branch point per teacher"):
    count_student_params(spec, (1,))
  with pytest.raises(ValueError, match="'normals' is not in this student"):
    spec.teacher_of("normals")
  with pytest.raises(ValueError, match=r"not in the student \['normals'\]"):
    init_student_from_teachers(spec, (1, 1), {**variables, "normals": teachers["normals"][1]},
                               rng=jax.random.key(0))
  with pytest.raises(ValueError, match=r"missing \['depth'\]"):
    init_student_from_teachers(spec, (1, 1), {"seg": variables["seg"]}, rng=jax.random.key(0))
  wrong = {"seg": variables["seg"], "depth": teachers["normals"][1]}  # 3 outputs, not 1
  with pytest.raises(ValueError, match=r"teacher_variables\['depth'\] after branch point 3.*"
                                       r"shape"):
    init_student_from_teachers(spec, (1, 3), wrong, rng=jax.random.key(0))
  with pytest.raises(ValueError, match="trunk_task"):
    StudentSpec(models(("seg", "depth")), trunk_task="normals")


# --- FLOPs --------------------------------------------------------------------------------
def hand_conv_gflops(widths, num_outputs, height, width):
  """2 x multiply-adds of SegNet's 3x3 convs, counting only taps inside the (unpadded) map."""
  def conv(cin, cout, h, w):
    return 2 * cin * cout * (3 * h - 2) * (3 * w - 2)
  total, cin, sizes = 0, 3, []
  h, w = height, width
  for level, n in enumerate(VGG16_CONVS):
    for _ in range(n):
      total += conv(cin, widths[level], h, w)
      cin = widths[level]
    sizes.append((h, w))
    h, w = h // 2, w // 2
  for level in reversed(range(5)):
    c, n = widths[level], VGG16_CONVS[level]
    out = num_outputs if level == 0 else widths[level - 1]
    total += (n - 1) * conv(c, c, *sizes[level]) + conv(c, out, *sizes[level])
  return total / 1e9


def test_gflops_per_image():
  teacher = SegNet(13, width_multiplier=WIDTH)
  got = flops.gflops_per_image(teacher, variable_shapes(teacher), (64, 96))
  convs = hand_conv_gflops(TINY, 13, 64, 96)
  assert convs <= got <= 1.08 * convs  # plus BN, ReLU, pooling
  spec = spec2()
  student = Student(spec, (4, 4))
  student_gflops = flops.gflops_per_image(student, variable_shapes(student), (64, 96))
  depth = SegNet(1, width_multiplier=WIDTH)
  two_teachers = got + flops.gflops_per_image(depth, variable_shapes(depth), (64, 96))
  # Sharing everything but up1 saves about one encoder + decoder trunk.
  assert got < student_gflops < 0.6 * two_teachers
