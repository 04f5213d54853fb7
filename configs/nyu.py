"""Amalgamating NYUv2 parsing and depth teachers (the KamalEngine recipe, docs/method.md §1).

Teachers: directories from `python -m kajax.convert_torch` (or `configs/teacher_nyu_*.py`);
data: `python -m kajax.build_data --dataset=nyuv2/labeled_mat --manual_dir=DIR`.
Student: Adam 1e-4, wd 1e-4, cosine, batch 16, 5,000 block-wise + 5,000 fine-tuning steps
on the 795 training images *without labels*; resized to 240x320, random 240x240 crops;
branch search on a held-out tenth of train; evaluated on the 654 test images at 240x320.

  python -m kajax.main --config=configs/nyu.py --workdir=nyu_student \
      --config.teachers.seg.dir=teachers/seg --config.teachers.depth.dir=teachers/depth

(paths relative to the current directory, as in a shell).
"""

from kajax import config_blocks


def get_config(arg=None):
  args = config_blocks.parse_arg(arg, ("tiny", "seed", "res"))
  return config_blocks.nyu_student(("seg", "depth"), args)
