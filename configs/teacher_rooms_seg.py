"""Teacher for 'seg' on synthetic rooms (kajax's embedded default data).

  python -m kajax.main --config=configs/teacher_rooms_seg.py --workdir=/tmp/teacher_seg
"""

import common


def get_config(arg=None):
  return common.rooms_teacher("seg", arg)
