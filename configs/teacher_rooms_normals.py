"""Teacher for 'normals' on synthetic rooms (kajax's embedded default data).

  python -m kajax.main --config=configs/teacher_rooms_normals.py --workdir=/tmp/teacher_normals
"""

import common


def get_config(arg=None):
  return common.rooms_teacher("normals", arg)
