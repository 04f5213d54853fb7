"""Step 3 of the method: choose each teacher's branch point from a teachers x 5 loss table.

The student branches once per teacher (a teacher supervises one task, or several when it is
an exported student, option B), so rows are teachers; a row is the teacher's weighted
projection loss summed over its tasks. The table holds, for teacher t and candidate k
(number of shared decoder blocks), the projection loss of the block-wise-trained student on
held-out, *unaugmented* images (KamalEngine picks on augmented training images, a defect we
do not repeat). The rule: k_t is the deepest k whose loss is within (1 + tau) of that row's
minimum; tau = 0 is the argmin, the default
tau = 0.1 buys a smaller student for at most 10% more loss (docs/method.md §1).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from etils import epath

from kajax import segnet, storage

RESULT_FILE = "branch_search.json"


def choose_branch_points(table: np.ndarray, tau: float) -> tuple[int, ...]:
  """Deepest k per row with loss <= (1 + tau) * row minimum.

  Args:
    table: (T, 5) losses; row t is task t, column k the branch point.
    tau: relative tolerance, >= 0.

  Returns:
    One branch point per task.
  """
  table = np.asarray(table, np.float64)
  if table.ndim != 2 or table.shape[1] != segnet.NUM_BRANCH_POINTS:
    raise ValueError(f"Branch-loss table must be (tasks, {segnet.NUM_BRANCH_POINTS}), "
                     f"got {table.shape}.")
  if tau < 0:
    raise ValueError(f"--config.branch.tau={tau} must be >= 0.")
  if not np.all(np.isfinite(table)):
    raise FloatingPointError(f"Branch-loss table has non-finite entries:\n{table}")
  limits = (1.0 + tau) * table.min(axis=1, keepdims=True)
  ok = table <= limits
  # The deepest admissible k: last True in each row (the minimum itself is always True).
  return tuple(int(segnet.NUM_BRANCH_POINTS - 1 - np.argmax(row[::-1])) for row in ok)


def parse_override(override: str | Sequence[int] | None, task_names: Sequence[str]
                   ) -> tuple[int, ...] | None:
  """``--config.branch.override`` ('1,2' or a tuple, one k per task; a single k is the same
  for every task) -> tuple, or None."""
  if override in (None, "", ()):
    return None
  if isinstance(override, int):
    override = (override,)
  values = override.split(",") if isinstance(override, str) else list(override)
  try:
    points = tuple(int(v) for v in values)
  except ValueError as e:
    raise ValueError(f"--config.branch.override={override!r}: give one integer per task "
                     f"({', '.join(task_names)}), e.g. '1,2', or one for all.") from e
  if len(points) == 1:
    points = points * len(task_names)
  if len(points) != len(task_names) or not all(
      0 <= k < segnet.NUM_BRANCH_POINTS for k in points):
    raise ValueError(f"--config.branch.override={override!r}: need {len(task_names)} values "
                     f"in 0..{segnet.NUM_BRANCH_POINTS - 1}, one per task "
                     f"({', '.join(task_names)}).")
  return points


def save_result(workdir: str, task_names: Sequence[str], table: np.ndarray, tau: float,
                chosen: Sequence[int], selected_by: str) -> str:
  """Writes the table and the choice to ``WORKDIR/branch_search.json`` atomically."""
  path = storage.join(workdir, RESULT_FILE)
  payload = {
      "teachers": list(task_names),  # one branch point per teacher (group of tasks)
      "losses": {t: [float(v) for v in row] for t, row in zip(task_names, np.asarray(table))},
      "tau": float(tau),
      "branch_points": {t: int(k) for t, k in zip(task_names, chosen)},
      "selected_by": selected_by,
  }
  storage.write_json(path, payload)  # Atomic: a kill never leaves half a file.
  return path


def load_result(workdir: str) -> Mapping[str, object] | None:
  """The saved branch search of a workdir, or None.

  In a multi-host run, decide *whether* it exists on one process
  (``multihost.broadcast_decision``) and read it after ``multihost.sync``.
  """
  path = epath.Path(workdir) / RESULT_FILE
  if not path.exists():
    return None
  return storage.read_json(path)


def format_table(task_names: Sequence[str], table: np.ndarray, chosen: Sequence[int]) -> str:
  """Markdown table of the losses with the chosen k of each task marked by '*'."""
  header = "| task | " + " | ".join(f"k={k}" for k in range(table.shape[1])) + " |"
  lines = [header, "|---" * (table.shape[1] + 1) + "|"]
  for t, row, k_t in zip(task_names, np.asarray(table), chosen):
    cells = [f"{v:.4g}{'*' if k == k_t else ''}" for k, v in enumerate(row)]
    lines.append(f"| {t} | " + " | ".join(cells) + " |")
  return "\n".join(lines)
