"""Amalgamating NYUv2 parsing, depth and surface-normals teachers (option A).

Teachers: directories from `python -m kajax.convert_torch` or `configs/teacher_nyu_*.py`.
The recipe of ``configs/nyu.py`` with a third teacher. Normals ground truth (for evaluation)
comes with ``nyuv2/mtan_npy``; ``nyuv2/labeled_mat`` derives approximate normals from its
depth, so both sources work (``--config.dataset=nyuv2/mtan_npy``).

  python -m kajax.main --config=configs/nyu3.py --workdir=DIR \\
      --config.teachers.seg.dir=/path/seg_teacher --config.teachers.depth.dir=/path/depth \\
      --config.teachers.normals.dir=/path/normals_teacher
"""

from kajax import config_blocks


def get_config(arg=None):
  args = config_blocks.parse_arg(arg, ("tiny", "seed", "res"))
  c = config_blocks.nyu_student(("seg", "depth", "normals"), args)
  if args.tiny:
    c.dataset = "nyuv2/mtan_npy"  # the tests' fake files carry normals in this format
  return c
