"""Three teachers on synthetic rooms, amalgamated both ways: option A and option B.

  python -m kajax.main --config=configs/demo3.py --workdir=/tmp/kajax_demo3

Trains a parsing, a depth and a surface-normals teacher (first use), then three students,
each an ordinary amalgamation run in its own sub-directory (``kajax.comparison``):

* ``two_task``: parsing + depth, as ``configs/demo.py``;
* ``option_a``: all three teachers at once (one branch point per teacher);
* ``option_b``: the finished ``two_task/student`` used as a two-task teacher, plus the normals
  teacher (one branch point toward the old student's tasks, one toward normals).

``WORKDIR/comparison.md`` reports, for each task, the teacher next to both students, with
parameters and GFLOPs per image. ``:tiny`` is a seconds-long variant for tests.
"""

from kajax import config_blocks

TASKS = ("seg", "depth", "normals")


def get_config(arg=None):
  args = config_blocks.parse_arg(arg, ("tiny", "long", "seed"))
  c = config_blocks.compare_config()
  teachers = {t: config_blocks.rooms_teacher(t, args) for t in TASKS}
  two = config_blocks.rooms_student(("seg", "depth"), teachers, args)
  option_a = config_blocks.rooms_student(TASKS, teachers, args)
  option_b = config_blocks.rooms_student(TASKS, teachers, args)
  # Option B: the two-task run's exported student is the teacher of seg and depth.
  option_b.teachers = {"two_task": {"dir": "{workdir}/two_task/student", "train_config": None},
                       "normals": option_a.teachers.normals.to_dict()}
  c.runs = {"two_task": two, "option_a": option_a, "option_b": option_b}
  c.run_order = ("two_task", "option_a", "option_b")
  c.labels = {"two_task": "two-task student", "option_a": "option A",
              "option_b": "option B"}
  return c
