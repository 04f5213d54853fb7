"""Monocular depth teacher (metres, L1 over valid pixels) on NYUv2 (the KamalEngine recipe, design.md §1).

SGD 0.01, momentum 0.9, wd 1e-4, cosine, batch 16, 10,000 steps on the 795 training images
resized to 240x320 with random 240x240 crops and flips; evaluated at 240x320. Build the data
first: python -m kajax.build_data --dataset=nyuv2/labeled_mat --manual_dir=DIR
"""

import common


def get_config(arg=None):
  c = common.teacher_config(
      "depth", "nyuv2/labeled_mat", "train", "test", width_multiplier=1.0, num_steps=10_000,
      batch_size=16, learning_rate=0.01,
      input_cfg=common.input_config(image_size=(240, 320), crop_size=(240, 240),
                                    scale_range=(1.0, 1.5)))
  c.optimizer = common.optimizer_config("sgd", 0.01, 1e-4)
  c.checkpoint_every = 1000
  c.log_every = 50
  if arg == "tiny":
    common.shrink_teacher(c)
  return c
