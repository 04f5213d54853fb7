"""Teacher for 'depth' on synthetic rooms (kajax's embedded default data).

  python -m kajax.main --config=configs/teacher_rooms_depth.py --workdir=/tmp/teacher_depth
"""

import common


def get_config(arg=None):
  return common.rooms_teacher("depth", arg)
