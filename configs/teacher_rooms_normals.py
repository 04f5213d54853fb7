"""Teacher for 'normals' on synthetic rooms (kajax's embedded default data).

  python -m kajax.main --config=configs/teacher_rooms_normals.py --workdir=/tmp/teacher_normals
"""

from kajax import config_blocks


def get_config(arg=None):
  args = config_blocks.parse_arg(arg, ("tiny", "long", "seed"))
  return config_blocks.rooms_teacher("normals", args)
