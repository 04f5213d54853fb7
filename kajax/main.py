"""Command line entry point: flags only; the work is in ``train_teacher`` and ``amalgamate``.

  python -m kajax.main --config=configs/demo.py --workdir=/tmp/kajax_demo
  python -m kajax.main --config=configs/teacher_rooms_seg.py --workdir=DIR [--config.x=y]
  python -m kajax.main --config=configs/demo.py --workdir=DIR --config.mode=evaluate

``config.mode`` selects the job: 'teacher' (train one teacher from labels), 'amalgamate'
(train teachers the config asks for if missing, then the four steps, evaluation and export),
'evaluate' (re-evaluate the student and teachers of an existing workdir).
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config "
                                          "file (optionally FILE:ARG, e.g. :tiny).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_DISTRIBUTED = flags.DEFINE_bool(
    "jax_distributed", False, "Call jax.distributed.initialize() first (multi-host: one "
    "process per host on Cloud TPU pods or multi-node GPU).")
flags.mark_flags_as_required(["config", "workdir"])

MODES = ("teacher", "amalgamate", "evaluate")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    # Orbax logs every checkpoint step at INFO; the progress bars say what matters.
    logging.set_verbosity(logging.WARNING)
  if _DISTRIBUTED.value:
    import jax
    jax.distributed.initialize()
  config, workdir = _CONFIG.value, os.path.abspath(_WORKDIR.value)
  mode = config.get("mode")
  if mode == "teacher":
    from kajax import train_teacher
    train_teacher.train_and_evaluate(config, workdir)
  elif mode == "amalgamate":
    from kajax import amalgamate
    amalgamate.train_and_evaluate(config, workdir)
  elif mode == "evaluate":
    from kajax import amalgamate
    amalgamate.evaluate_workdir(config, workdir)
  else:
    raise app.UsageError(f"--config.mode={mode!r}: choose one of {MODES}.")


if __name__ == "__main__":
  app.run(main)
