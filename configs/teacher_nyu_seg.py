"""13-class scene-parsing teacher on NYUv2.

The KamalEngine recipe (``kajax.config_blocks.nyu_teacher``). Build the data first:
  python -m kajax.build_data --dataset=nyuv2/labeled_mat --manual_dir=DIR
  python -m kajax.main --config=configs/teacher_nyu_seg.py --workdir=DIR
"""

from kajax import config_blocks


def get_config(arg=None):
  args = config_blocks.parse_arg(arg, ("tiny", "seed", "res"))
  return config_blocks.nyu_teacher("seg", args)
