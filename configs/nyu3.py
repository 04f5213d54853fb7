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
  c = config_blocks.amalgamation_config(
      ("seg", "depth", "normals"), "nyuv2/labeled_mat", unlabeled_split="train[:90%]",
      branch_split="train[90%:]", test_split="test", block_steps=5000, finetune_steps=5000,
      batch_size=16, learning_rate=1e-4,
      input_cfg=config_blocks.input_config(image_size=(240, 320), crop_size=(240, 240),
                                           color_jitter=(0.0, 0.0, 0.0)))
  c.checkpoint_every = 500
  c.log_every = 50
  if args.tiny:
    c.dataset = "nyuv2/mtan_npy"
    config_blocks.shrink_amalgamation(c)
    c.input.image_size, c.input.crop_size = (64, 96), (64, 64)
  return config_blocks.apply_common_args(c, args)
