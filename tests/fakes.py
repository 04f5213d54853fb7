"""Small fakes shared by tests: teachers with random weights, without compiling ``init``.

Compiling ``SegNet.init`` takes ~20 s on a loaded 2-core machine, so variables are filled with
NumPy from the ``eval_shape`` structure. BatchNorm statistics and scales are perturbed so that
a block copied without them would show.
"""

import jax
import jax.numpy as jnp
import numpy as np

from kajax import segnet, teacher_files


def random_variables(module, seed, probe=(1, 64, 64, 3)):
  """Variables of ``module`` filled with He-normal kernels and non-trivial BN statistics."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(probe)))
  rng = np.random.default_rng(seed)

  def fill(path, x):
    name = path[-1].key
    if name == "kernel":
      values = rng.standard_normal(x.shape) * np.sqrt(2.0 / np.prod(x.shape[:-1]))
    elif name in ("var", "scale"):
      values = rng.uniform(0.5, 1.5, x.shape)
    else:  # conv/BN bias, running mean
      values = 0.1 * rng.standard_normal(x.shape)
    return np.asarray(values, x.dtype)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def make_teacher(task, num_outputs, seed, width=1 / 16):
  """(module, variables, TeacherInfo) of a random teacher."""
  module = segnet.SegNet(num_outputs, width_multiplier=width)
  variables = random_variables(module, seed)
  info = teacher_files.TeacherInfo(task=task, num_outputs=num_outputs, arch=module.arch,
                                head=module.head, width_multiplier=width,
                                params=segnet.count_params(variables["params"]),
                                source="random test teacher")
  return module, variables, info


def save_random_teacher(directory, task, num_outputs, seed, width=1 / 16):
  """Writes a random teacher directory; returns (module, variables, info)."""
  module, variables, info = make_teacher(task, num_outputs, seed, width)
  teacher_files.save_teacher(directory, variables, info)
  return module, variables, info
