"""13-class scene-parsing teacher on NYUv2.

The KamalEngine recipe (``common.nyu_teacher``). Build the data first:
  python -m kajax.build_data --dataset=nyuv2/labeled_mat --manual_dir=DIR
  python -m kajax.main --config=configs/teacher_nyu_seg.py --workdir=DIR
"""

import common


def get_config(arg=None):
  return common.nyu_teacher("seg", arg)
