"""The demo: the whole method on synthetic rooms, from nothing, on a laptop CPU.

Generates the data (first use), trains a parsing and a depth teacher on disjoint labelled
splits, amalgamates them into one student on unlabelled images, and evaluates all three:

  python -m kajax.main --config=configs/demo.py --workdir=/tmp/kajax_demo

Budget on 2 CPU cores (``python -m kajax.benchmarks.train_steps``): data ~0.5 min, teachers
of batch 32 (~4 min each; parsing 1,000 steps at half the side, then 250 at the full size;
depth 500 steps), then the teachers' targets on the 1,000 unlabelled images once (8 views
each, ~1 min) and the student, 300 block-wise + 2,000 fine-tuning steps of batch 8 (a step's
time is proportional to its batch on a CPU, so smaller batches buy more updates for the same
images). Measured times (README, "Measured") are on an AVX2-only EPYC, ~3x slower than an
AVX-512 one.

``:long`` takes about 2.5 times as long (each teacher sees 2x as many labelled images, the
student 3x the steps); its teachers pass 0.40 mIoU and 0.50 m RMSE (README, one seed).

The ``test`` split is read only by the final evaluation (the teachers trained here report on
``validation``; ``kajax.config_blocks.rooms_student``). Over several seeds:
``python -m kajax.benchmarks.seeds --config=configs/demo.py --seeds=3 --workdir=DIR``.
"""

from kajax import config_blocks

TASKS = ("seg", "depth")


def get_config(arg=None):
  args = config_blocks.parse_arg(arg, ("tiny", "long", "seed"))
  teachers = {t: config_blocks.rooms_teacher(t, args) for t in TASKS}
  return config_blocks.rooms_student(TASKS, teachers, args)
