"""Option B on synthetic rooms: add a surface-normals teacher to a finished student.

After the two-task demo (``configs/demo.py``), one command adds normals to its student:

  python -m kajax.main --config=configs/demo_add_normals.py --workdir=/tmp/kajax_demo_normals \\
      --config.teachers.demo.dir=/tmp/kajax_demo/student

The old student becomes a two-task teacher (``kajax.teacher_model.StudentTeacher``); the
normals teacher is trained first if its directory holds none. The new student branches once
toward the old student's tasks and once toward normals.
"""

from kajax import config_blocks

TASKS = ("seg", "depth", "normals")


def get_config(arg=None):
  args = config_blocks.parse_arg(arg, ("tiny", "seed"))
  c = config_blocks.rooms_student(TASKS, {"normals": config_blocks.rooms_teacher("normals",
                                                                                args)}, args)
  c.teachers = {"demo": {"dir": "", "train_config": None},  # an exported student directory
                "normals": c.teachers.normals.to_dict()}
  return c
