"""Tests for kajax.teacher_model: SegNet teachers and exported students used as teachers
(option B), their projections, their JSON form, and the errors of a bad option-B setup.

The reference for an old student's projection is a direct composition of its own modules
(``decoder_block``, ``ChannelGate``) applied block by block to its saved variables, written
out here independently of ``StudentTail``.
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from kajax import export, student_init, teacher_model, teacher_setup
from kajax.gates import ChannelGate
from kajax.segnet import DECODER_BLOCKS, SegNet, decoder_block
from kajax.student_model import Student, StudentTrunk
from kajax.student_spec import StudentSpec
from tests import fakes

WIDTH = 1 / 16
IMAGE = (2, 64, 96, 3)
OLD_KS = (1, 2)  # the old student: seg branches after up5, depth after up4
TOL = dict(rtol=1e-5, atol=1e-5)


def _perturb_gates(variables, seed):
  """Trained-looking gates (not the identity they start at), so skipping one would show."""
  rng = np.random.default_rng(seed)
  params = dict(variables["params"])
  for name in params:
    if name.startswith("gate_"):
      params[name] = jax.tree_util.tree_map(
          lambda x: jnp.asarray(0.3 * rng.standard_normal(x.shape), x.dtype), params[name])
  return {**variables, "params": params}


@pytest.fixture(scope="module")
def old():
  """A two-task student (seg k=1, depth k=2) with non-identity gates, and the normals
  teacher to add to it."""
  seg, depth, normals = (fakes.make_teacher(t, c, s, WIDTH)
                         for t, c, s in (("seg", 13, 0), ("depth", 1, 1), ("normals", 3, 2)))
  spec = StudentSpec(tuple(teacher_model.from_teacher_info(t, m[2])
                           for t, m in (("seg", seg), ("depth", depth))))
  variables = student_init.init_student_from_teachers(
      spec, OLD_KS, {"seg": seg[1], "depth": depth[1]}, rng=jax.random.key(0))
  variables = _perturb_gates(variables, 1)
  image = np.random.default_rng(3).standard_normal(IMAGE).astype(np.float32)
  return dict(spec=spec, variables=variables, normals=normals, image=image,
              model=teacher_model.StudentTeacher("base", spec, OLD_KS))


def _direct_projection(variables, f, indices, k):
  """The old student's modules composed by hand from shared feature f_k."""
  params, stats = variables["params"], variables["batch_stats"]

  def block(name, p, b, x, outputs=1):
    module = decoder_block(name, "segnet_vgg16_bn", outputs, WIDTH, "conv")
    return module.apply({"params": p[name], "batch_stats": b.get(name, {})}, x,
                        indices[int(name[2:]) - 1], False)

  shared = {k: f}
  for j in range(k, max(OLD_KS)):  # old trunk blocks after k
    shared[j + 1] = block(DECODER_BLOCKS[j], params, stats, shared[j])
  out = {}
  for task, k_t, c in (("seg", OLD_KS[0], 13), ("depth", OLD_KS[1], 1)):
    if k <= k_t:  # the old branch point is ahead: its gate, then its whole branch
      x = ChannelGate().apply({"params": params[f"gate_{task}_{k_t}"]}, shared[k_t])
      start = k_t
    else:  # already branched: the branch's blocks after k, on f_k, no gate
      x, start = f, k
    for name in DECODER_BLOCKS[start:]:
      x = block(name, params[f"branch_{task}"], stats.get(f"branch_{task}", {}), x, c)
    out[task] = x
  return out


def _shared_features(old, image):
  """f_0..f_4 and indices of a student trunk initialised from the old student."""
  spec = StudentSpec((old["model"], teacher_model.from_teacher_info("normals",
                                                                     old["normals"][2])))
  trunk_vars = student_init.init_trunk_from_teachers(
      spec, {"base": old["variables"], "normals": old["normals"][1]}, jax.random.key(0))
  trunk_vars = _perturb_gates(trunk_vars, 2)  # any trunk will do; gates must not be 1
  return spec, trunk_vars, StudentTrunk(spec).apply(trunk_vars, image, False)


@pytest.mark.parametrize("k", [0, 1, 2, 3, 4])
def test_old_student_projection_equals_direct_composition(old, k):
  # k = 0, 1: before/at both old branch points; 2: past seg's, at depth's; 3, 4: past both.
  _, _, (gated, indices) = _shared_features(old, old["image"])
  got = old["model"].project(old["variables"], gated[0][k], indices, k)
  want = _direct_projection(old["variables"], gated[0][k], indices, k)
  assert set(got) == {"seg", "depth"}
  for task in got:
    np.testing.assert_allclose(got[task], want[task], **TOL)


def test_projection_from_the_encoder_is_the_whole_student(old):
  """tail(0) after the old student's own encoder is its full forward pass, and its outputs()
  equal Student.apply (the same holds one level deeper for an option-B student)."""
  model, variables, image = old["model"], old["variables"], old["image"]
  f0, indices = _encode(variables, image)
  full = Student(old["spec"], OLD_KS).apply(variables, image, False)[0]
  for task, out in model.project(variables, f0, indices, 0).items():
    np.testing.assert_allclose(out, full[task], **TOL)
    np.testing.assert_allclose(model.outputs(variables, image)[task], full[task], **TOL)


def _encode(variables, image):
  seg = SegNet(13, width_multiplier=WIDTH)
  encoder = {c: {b: v[b] for b in v if b.startswith("down")} for c, v in variables.items()}
  f0, indices, _ = seg.apply(encoder, image, False, method=SegNet.encode)
  return f0, indices


@pytest.mark.parametrize("ks", [(0, 3), (3, 1)])
def test_option_b_student_starts_as_its_teachers(old, ks):
  """The new student (old student + normals) at initialisation: its old-task branch is the old
  student's tail and its trunk follows the trunk task's (seg's) path. Before the old branch
  points (k = 0) it reproduces the old student's seg exactly; after seg's (k = 3) the shared
  trunk holds seg's branch blocks but not seg's gate (a data-dependent gate cannot be folded
  into the blocks), so it equals the old student with that gate at identity."""
  spec, _, _ = _shared_features(old, old["image"])
  teacher_vars = {"base": old["variables"], "normals": old["normals"][1]}
  variables = student_init.init_student_from_teachers(spec, ks, teacher_vars,
                                                      rng=jax.random.key(0))
  out, _ = Student(spec, ks).apply(variables, old["image"], False)
  reference = old["variables"]
  if ks[0] > OLD_KS[0]:
    params = dict(reference["params"])
    params["gate_seg_1"] = jax.tree_util.tree_map(jnp.zeros_like, params["gate_seg_1"])
    reference = {**reference, "params": params}  # 2 * sigmoid(0) = 1: the identity gate
  old_out = Student(old["spec"], OLD_KS).apply(reference, old["image"], False)[0]
  np.testing.assert_allclose(out["seg"], old_out["seg"], **TOL)
  assert out["normals"].shape == IMAGE[:3] + (3,)
  # The pruned student holds the old student's gates inside its base branch.
  branch = variables["params"]["branch_base"]
  assert ("gate_seg_1" in branch) == (ks[0] <= 1) and ("gate_depth_2" in branch) == (ks[0] <= 2)


def test_json_round_trip_and_nested_student_teacher(old, tmp_path):
  """A student directory records its teachers; an option-B student can be a teacher again."""
  spec, _, _ = _shared_features(old, old["image"])
  ks = (2, 1)
  variables = student_init.init_student_from_teachers(
      spec, ks, {"base": old["variables"], "normals": old["normals"][1]}, rng=jax.random.key(0))
  path = export.save_student(str(tmp_path / "student"), spec, ks, variables)
  _, loaded, info = export.load_student(path)
  assert export.spec_of(info) == (spec, ks)
  assert info["tasks"] == ["seg", "depth", "normals"] and info["teachers"] == ["base", "normals"]
  nested = teacher_model.StudentTeacher("older", spec, ks)
  f0, indices = _encode(loaded, old["image"])
  for task, out in nested.project(loaded, f0, indices, 0).items():
    np.testing.assert_allclose(out, nested.outputs(loaded, old["image"])[task], **TOL)


def _config(teachers, tasks):
  c = ml_collections.ConfigDict()
  c.tasks = tasks
  c.teachers = {name: {"dir": path, "train_config": None} for name, path in teachers.items()}
  return c


def test_option_b_bad_input_names_what_to_fix(old, tmp_path):
  student_dir = export.save_student(str(tmp_path / "student"), old["spec"], OLD_KS,
                                    old["variables"])
  wide = str(tmp_path / "normals_wide")
  fakes.save_random_teacher(wide, "normals", 3, 5, width=1 / 8)
  with pytest.raises(ValueError, match=r"encoders differ.*teachers\.base \(student "
                     + r".*width_multiplier 0\.0625.*teachers\.normals .*width_multiplier 0\.125"):
    teacher_setup.load_teachers(_config({"base": student_dir, "normals": wide},
                                        ("seg", "depth", "normals")), str(tmp_path))
  seg_dir = str(tmp_path / "seg")
  fakes.save_random_teacher(seg_dir, "seg", 13, 6, width=WIDTH)
  with pytest.raises(ValueError, match=r"Task 'seg' is given twice: by teachers\.base .* and "
                                       r"by teachers\.seg"):
    teacher_setup.load_teachers(_config({"base": student_dir, "seg": seg_dir},
                                        ("seg", "depth")), str(tmp_path))
  normals_dir = str(tmp_path / "normals")
  fakes.save_random_teacher(normals_dir, "normals", 3, 7, width=WIDTH)
  with pytest.raises(ValueError, match=r"--config\.tasks=\('seg', 'normals'\) but the teachers "
                                       r"supervise \('seg', 'depth', 'normals'\)"):
    teacher_setup.load_teachers(_config({"base": student_dir, "normals": normals_dir},
                                        ("seg", "normals")), str(tmp_path))
  loaded = teacher_setup.load_teachers(_config({"base": student_dir, "normals": normals_dir},
                                               ("seg", "depth", "normals")), str(tmp_path))
  assert loaded["base"].model.kind == "student" and loaded["base"].tasks == ("seg", "depth")
