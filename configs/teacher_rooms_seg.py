"""Teacher for 'seg' on synthetic rooms (kajax's embedded default data).

  python -m kajax.main --config=configs/teacher_rooms_seg.py --workdir=/tmp/teacher_seg
"""

from kajax import config_blocks


def get_config(arg=None):
  args = config_blocks.parse_arg(arg, ("tiny", "long", "seed"))
  return config_blocks.rooms_teacher("seg", args)
