"""The converted-teacher directory: how every kajax component stores and loads a teacher.

A teacher directory holds two things (docs/method.md §3, "converted teachers are stored
once as their own Orbax checkpoints"):

  DIR/teacher.json   TeacherInfo: task, outputs, SegNet preset, head, width, provenance.
  DIR/variables/     Orbax checkpoint of ``{'params': ..., 'batch_stats': ...}``.

Writing is atomic (``kajax.storage.atomic_directory``): locally everything goes into a hidden
sibling directory renamed into place at the end; in a bucket ``teacher.json`` is written last.
Either way an interrupted conversion never leaves something that reads as a teacher.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from kajax import segnet, storage, tasks

INFO_FILE = "teacher.json"
VARIABLES_DIR = "variables"
TASKS = tasks.TASKS  # the built-in tasks; any registered task (kajax.tasks) is accepted
# Input used only to derive the expected variable shapes; SegNet's shapes do not depend on it.
_SHAPE_PROBE = (1, 64, 64, 3)


@dataclasses.dataclass(frozen=True)
class TeacherInfo:
  """What a teacher is and where it came from (stored as ``teacher.json``).

  Attributes:
    task: 'seg', 'depth' or 'normals'.
    num_outputs: output channels (classes for 'seg', 1 for depth, 3 for normals).
    arch: a key of ``kajax.segnet.ARCH_CONVS``, e.g. 'segnet_vgg16_bn'.
    head: 'conv' or 'conv_bn_relu' (see ``kajax.segnet.HEADS``).
    width_multiplier: channel multiplier of the SegNet (1.0 = the paper's widths).
    input_coords: whether the SegNet appends coordinate channels to its input image
      (``kajax.segnet.with_coordinate_channels``); absent from older files: False.
    params: number of trainable parameters.
    source: path of the converted file, or a description such as 'kajax teacher training'.
    source_sha256: SHA-256 of the source file, or None.
    extra: free-form settings added by later components (e.g. depth bins).
  """
  task: str
  num_outputs: int
  arch: str
  head: str
  width_multiplier: float = 1.0
  input_coords: bool = False
  params: int = 0
  source: str = ""
  source_sha256: str | None = None
  extra: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    # Accept NumPy scalars but store plain Python numbers so the JSON stays portable.
    if isinstance(self.num_outputs, np.integer):
      object.__setattr__(self, "num_outputs", int(self.num_outputs))
    if isinstance(self.width_multiplier, (int, np.number)):
      object.__setattr__(self, "width_multiplier", float(self.width_multiplier))
    if isinstance(self.params, np.integer):
      object.__setattr__(self, "params", int(self.params))
    problems = []
    if self.task not in tasks.registered():
      problems.append(f"task={self.task!r} is not one of the registered tasks "
                      f"{tasks.registered()}")
    if not isinstance(self.num_outputs, int) or self.num_outputs < 1:
      problems.append(f"num_outputs={self.num_outputs!r} must be a positive integer")
    if self.arch not in segnet.ARCH_CONVS:
      problems.append(f"arch={self.arch!r} is not one of {sorted(segnet.ARCH_CONVS)}")
    if self.head not in segnet.HEADS:
      problems.append(f"head={self.head!r} is not one of {segnet.HEADS}")
    if not isinstance(self.width_multiplier, float) or not self.width_multiplier > 0:
      problems.append(f"width_multiplier={self.width_multiplier!r} must be positive")
    if not isinstance(self.input_coords, bool):
      problems.append(f"input_coords={self.input_coords!r} must be true or false")
    if problems:
      raise ValueError("Invalid TeacherInfo: " + "; ".join(problems) + ".")

  def to_json(self) -> str:
    """Serialises to an indented JSON string."""
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> "TeacherInfo":
    """Parses :meth:`to_json` output; raises ValueError naming unknown or missing fields."""
    data = json.loads(text)
    if not isinstance(data, dict):
      raise ValueError(f"Teacher info must be a JSON object, got {type(data).__name__}.")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = sorted(required - set(data))
    if unknown or missing:
      raise ValueError(f"Teacher info has unknown fields {unknown} / misses fields {missing}.")
    return cls(**data)

  def build_module(self) -> segnet.SegNet:
    """The (unbound) SegNet this teacher's variables belong to."""
    return segnet.SegNet(self.num_outputs, self.arch, self.width_multiplier, self.head,
                         input_coords=self.input_coords)


def expected_shapes(module: segnet.SegNet) -> dict[str, Any]:
  """``{'params': ..., 'batch_stats': ...}`` of ShapeDtypeStructs, without initialising."""
  variables = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros(_SHAPE_PROBE))
  return {k: v for k, v in variables.items()}


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """Nested dicts -> {'params/down1/layer0/conv/kernel': leaf}."""
  flat = {}
  for key, value in tree.items():
    path = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, dict):
      flat.update(_flatten(value, path))
    else:
      flat[path] = value
  return flat


def tree_mismatches(expected: Any, found: Any) -> list[str]:
  """Every missing key, unexpected key and shape mismatch between two nested dicts."""
  exp, got = _flatten(dict(expected)), _flatten(dict(found))
  problems = [f"missing {k} (expected shape {tuple(exp[k].shape)})"
              for k in sorted(set(exp) - set(got))]
  problems += [f"unexpected {k} (shape {tuple(np.shape(got[k]))})"
               for k in sorted(set(got) - set(exp))]
  problems += [f"shape mismatch at {k}: expected {tuple(exp[k].shape)}, "
               f"found {tuple(np.shape(got[k]))}"
               for k in sorted(set(exp) & set(got))
               if tuple(exp[k].shape) != tuple(np.shape(got[k]))]
  return problems


def process_local_checkpointer():
  """A process-local Orbax checkpointer.

  Teacher variables are plain NumPy arrays: every process reads its own copy, and only one
  process (normally 0) writes, so no cross-process barrier may be involved: with Orbax's
  default options a save on process 0 alone fails in a multi-host run.
  """
  import orbax.checkpoint as ocp  # Heavy import, only needed when reading or writing.
  me = jax.process_index()
  return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
      primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"teacher_files_{me}"))


def is_teacher_dir(path: str | os.PathLike) -> bool:
  """True if ``path`` looks like a complete teacher directory (teacher.json + variables/)."""
  path = epath.Path(path)
  return (path / INFO_FILE).exists() and (path / VARIABLES_DIR).is_dir()


def save_teacher(output_dir: str | os.PathLike, variables: dict[str, Any], info: TeacherInfo,
                 overwrite: bool = False) -> str:
  """Writes a teacher directory atomically (local or ``gs://``; see ``kajax.storage``).

  Args:
    output_dir: directory to create. It must not exist or be empty unless ``overwrite``.
    variables: ``{'params': ..., 'batch_stats': ...}`` of NumPy or JAX arrays.
    info: the teacher's description; its shapes are checked against ``variables``.
    overwrite: replace an existing non-empty ``output_dir``.

  Returns:
    The written directory (absolute when local).
  """
  output_dir = storage.resolve(output_dir)
  if output_dir.exists():
    if not output_dir.is_dir():
      raise FileExistsError(f"{output_dir} exists and is not a directory; choose another "
                            "output directory.")
    if any(output_dir.iterdir()) and not overwrite:
      raise FileExistsError(f"{output_dir} already exists and is not empty; pass "
                            "overwrite=True (--overwrite) to replace it or choose another "
                            "output directory.")
  variables = {k: jax.tree.map(np.asarray, v) for k, v in dict(variables).items()}
  variables.setdefault("batch_stats", {})
  problems = tree_mismatches(expected_shapes(info.build_module()), variables)
  if problems:
    raise ValueError(f"Variables do not fit the SegNet described by {info}:\n  "
                     + "\n  ".join(problems))
  with storage.atomic_directory(output_dir, INFO_FILE) as tmp:
    checkpointer = process_local_checkpointer()
    try:
      checkpointer.save(tmp / VARIABLES_DIR, variables)
      checkpointer.wait_until_finished()
    finally:
      checkpointer.close()
    # Written last: its presence is what makes the directory a teacher (is_teacher_dir).
    (tmp / INFO_FILE).write_text(info.to_json() + "\n")
  return os.fspath(output_dir)


def read_info(teacher_dir: str | os.PathLike) -> TeacherInfo:
  """Reads ``teacher.json``; errors name the directory and say what is wrong."""
  teacher_dir = epath.Path(teacher_dir)
  if not teacher_dir.is_dir():
    raise FileNotFoundError(f"Teacher directory {teacher_dir} does not exist; convert a "
                            "checkpoint with `python -m kajax.convert_torch` or train a "
                            "teacher first.")
  info_path = teacher_dir / INFO_FILE
  if not info_path.exists():
    raise FileNotFoundError(f"{teacher_dir} is not a teacher directory: it has no "
                            f"{INFO_FILE}.")
  try:
    return TeacherInfo.from_json(info_path.read_text())
  except (ValueError, TypeError) as e:  # json.JSONDecodeError is a ValueError.
    raise ValueError(f"Malformed {info_path}: {e}") from e


def load_teacher(teacher_dir: str | os.PathLike
                 ) -> tuple[segnet.SegNet, dict[str, Any], TeacherInfo]:
  """Loads a teacher directory written by :func:`save_teacher`.

  Returns:
    (module, variables, info): the SegNet module, ``{'params', 'batch_stats'}`` of NumPy
    arrays (checked against the module's shapes), and the TeacherInfo.
  """
  info = read_info(teacher_dir)
  var_dir = storage.resolve(teacher_dir) / VARIABLES_DIR
  if not var_dir.is_dir():
    raise FileNotFoundError(f"{teacher_dir} has no {VARIABLES_DIR}/ checkpoint directory.")
  checkpointer = process_local_checkpointer()
  try:
    variables = checkpointer.restore(var_dir)
  except Exception as e:  # Orbax raises many types; the directory is what the user needs.
    raise ValueError(f"Cannot read the teacher checkpoint {var_dir}: {e}") from e
  finally:
    checkpointer.close()
  variables = {k: jax.tree.map(np.asarray, v) for k, v in dict(variables).items()}
  variables.setdefault("batch_stats", {})
  module = info.build_module()
  problems = tree_mismatches(expected_shapes(module), variables)
  if problems:
    raise ValueError(f"Teacher {teacher_dir} does not match its teacher.json ({info.arch}, "
                     f"{info.num_outputs} outputs, width {info.width_multiplier}, head "
                     f"{info.head}, input_coords {info.input_coords}):\n  "
                     + "\n  ".join(problems))
  return module, variables, info
