"""Surface-normals teacher (1 - cos over valid pixels) on NYUv2.

The KamalEngine recipe (``kajax.config_blocks.nyu_teacher``). ``nyuv2/labeled_mat`` has
approximate normals derived from its depth; ``--config.dataset=nyuv2/mtan_npy`` uses MTAN's.
  python -m kajax.build_data --dataset=nyuv2/labeled_mat --manual_dir=DIR
  python -m kajax.main --config=configs/teacher_nyu_normals.py --workdir=DIR
"""

from kajax import config_blocks


def get_config(arg=None):
  args = config_blocks.parse_arg(arg, ("tiny", "seed", "res"))
  return config_blocks.nyu_teacher("normals", args)
