"""The demo: the whole method on synthetic rooms, from nothing, on a laptop CPU.

Generates the data (first use), trains a parsing and a depth teacher on disjoint labelled
splits, amalgamates them into one student on unlabelled images, and evaluates all three:

  python -m kajax.main --config=configs/demo.py --workdir=/tmp/kajax_demo

Budget on 2 CPU cores (``python -m kajax.benchmarks.train_steps``): data ~0.5 min, teachers
500 steps of batch 16 (~2.3 min each), student 300 block-wise + 1,000 fine-tuning steps of
batch 8 (~5.5 min; a step's time is proportional to its batch on a CPU, so smaller batches buy
more updates for the same images).
"""

from kajax import config_blocks


def get_config(arg=None):
  args = config_blocks.parse_arg(arg, ("tiny", "seed"))
  tasks = ("seg", "depth")
  c = config_blocks.amalgamation_config(
      tasks, "synthetic_rooms/small", unlabeled_split="unlabeled",
      branch_split="validation", test_split="test", block_steps=300, finetune_steps=1000,
      batch_size=8, learning_rate=5e-4,
      input_cfg=config_blocks.input_config(scale_range=(1.0, 1.25)))
  for t in tasks:
    c.teachers[t].train_config = config_blocks.rooms_teacher(t, args)
  if args.tiny:
    c.dataset = "synthetic_rooms/tiny"
    config_blocks.shrink_amalgamation(c)
  return config_blocks.apply_common_args(c, args)
