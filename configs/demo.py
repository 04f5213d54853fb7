"""The demo: the whole method on synthetic rooms, from nothing, on a laptop CPU.

Generates the data (first use), trains a parsing and a depth teacher on disjoint labelled
splits, amalgamates them into one student on unlabelled images, and evaluates all three:

  python -m kajax.main --config=configs/demo.py --workdir=/tmp/kajax_demo

Budget (design.md §5, 2 CPU cores): data ~0.5 min, teachers ~2.5 min each, student
(150 block-wise + 1,050 fine-tuning steps) ~5 min.
"""

import common


def get_config(arg=None):
  tasks = ("seg", "depth")
  c = common.amalgamation_config(
      tasks, "synthetic_rooms/small", unlabeled_split="unlabeled",
      branch_split="validation", test_split="test", block_steps=150, finetune_steps=1050,
      batch_size=16, learning_rate=5e-4, input_cfg=common.input_config(scale_range=(1.0, 1.25)))
  for t in tasks:
    c.teachers[t].train_config = common.rooms_teacher(t, arg)
  if arg == "tiny":
    c.dataset = "synthetic_rooms/tiny"
    common.shrink_amalgamation(c)
  return c
