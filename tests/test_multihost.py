"""Tests of kajax.multihost: helpers in one process, SIGTERM in the training loop, and real
two-process runs of ``python -m kajax.main`` on 127.0.0.1 (``jax.distributed`` with a local
coordinator, 4 fake CPU devices per process, gloo collectives), with no barrier added by the
test: kill and resume, preemption, a failing host, hosts that do not share the workdir, and
the final student compared with a one-process run on 8 devices."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kajax import checkpointing, multihost, optim, parallel, training_loop
from tests import multiprocess_runner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_one_process_helpers(tmp_path):
  assert multihost.is_main_process() and not multihost.is_multiprocess()
  assert multihost.broadcast_decision(True) is True
  assert multihost.broadcast_decision(7) == 7
  np.testing.assert_array_equal(multihost.all_processes(5), [5])
  multihost.sync("nothing to wait for")
  multihost.check_shared_directory(tmp_path / "w", "workdir", "--workdir")
  assert not (tmp_path / "w").exists()  # Nothing to check with one process: nothing written.


class _Counter:
  """A data iterator of batches whose images all equal the batch index (resumable)."""

  def __init__(self):
    self.i = 0

  def __next__(self):
    self.i += 1
    return {"image": np.full((8, 1), float(self.i), np.float32)}

  def get_state(self):
    return {"i": self.i}

  def set_state(self, state):
    self.i = state["i"]


class _Recorder:
  """Stands in for the TensorBoard writer; keeps every scalar."""

  def __init__(self):
    self.logged = {}

  def scalars(self, step, values, prefix=""):
    self.logged[step] = {prefix + k: v for k, v in values.items()}

  def flush(self):
    pass


def _step(state, batch):
  # loss = the batch's value: the logged mean over an interval is then known by hand.
  loss = jnp.mean(batch["image"])
  return state.replace(step=state.step + 1, params=state.params + loss), {"loss": loss}


def _state(mesh):
  tx = optim.make_optimizer(optim_config(), 10)
  return parallel.replicate(optim.create_train_state({"params": jnp.zeros(())}, tx), mesh)


def optim_config():
  import ml_collections
  return ml_collections.ConfigDict({"name": "sgd", "learning_rate": 0.5, "schedule": "constant"})


def test_sigterm_saves_at_the_next_step_and_resume_finishes_the_same(tmp_path):
  mesh = parallel.make_mesh()
  loop = training_loop.LoopConfig(num_steps=8, log_every=4, checkpoint_every=100, batch_size=8)
  jitted = jax.jit(_step)
  sent = []

  def step_then_signal(state, batch):
    state, metrics = jitted(state, batch)
    if int(state.step) == 3 and not sent:
      sent.append(1)
      os.kill(os.getpid(), signal.SIGTERM)  # What a pod scheduler sends before preempting.
    return state, metrics

  previous = signal.signal(signal.SIGTERM, multihost.PREEMPTION.on_sigterm)
  try:
    ckpt = checkpointing.Checkpointer(tmp_path / "ck")
    writer = _Recorder()
    with pytest.raises(multihost.Preempted, match="step 3"):
      training_loop.run("p", step_then_signal, _state(mesh), _Counter(), mesh, loop, ckpt,
                        writer, learning_rate=lambda s: 0.5)
    assert ckpt.latest_step() == 3  # Saved at once although checkpoint_every is 100.
    assert writer.logged[3]["p/loss"] == pytest.approx((1 + 2 + 3) / 3)  # Interval mean.
    ckpt.close()
    multihost.PREEMPTION._sigterm.clear()  # pylint: disable=protected-access
    # The same command again: resumes at step 3 with the data iterator where it was.
    ckpt = checkpointing.Checkpointer(tmp_path / "ck")
    iterator, state = _Counter(), _state(mesh)
    state, meta = ckpt.restore(state)
    iterator.set_state(meta["data_iterator"])
    writer = _Recorder()
    final = training_loop.run("p", jitted, state, iterator, mesh, loop, ckpt, writer,
                              learning_rate=lambda s: 0.5)
    ckpt.close()
  finally:
    signal.signal(signal.SIGTERM, previous)
    multihost.PREEMPTION._sigterm.clear()  # pylint: disable=protected-access
  assert float(final.params) == sum(range(1, 9))  # Every batch exactly once.
  assert writer.logged[4]["p/loss"] == 4.0  # Interval of one step after the resume.
  assert writer.logged[8]["p/loss"] == pytest.approx((5 + 6 + 7 + 8) / 4)
  assert writer.logged[8]["p/learning_rate"] == 0.5
  assert writer.logged[8]["p/images_per_s"] == pytest.approx(
      8 * writer.logged[8]["p/steps_per_s"])


def test_sigterm_outside_a_training_loop_stops_at_once():
  previous = signal.signal(signal.SIGTERM, multihost.PREEMPTION.on_sigterm)
  try:
    with pytest.raises(multihost.Preempted, match="outside a training loop"):
      os.kill(os.getpid(), signal.SIGTERM)
      for _ in range(1000):  # The handler runs between bytecodes of the main thread.
        pass
  finally:
    signal.signal(signal.SIGTERM, previous)
    multihost.PREEMPTION._sigterm.clear()  # pylint: disable=protected-access


def test_exit_on_failure_reraises_in_one_process_and_maps_preemption():
  with pytest.raises(ValueError):
    with multihost.exit_on_failure():
      raise ValueError("plain error")
  with pytest.raises(SystemExit) as e:
    with multihost.exit_on_failure():
      raise multihost.Preempted("stop")
  assert e.value.code == multihost.PREEMPTED_EXIT_CODE == 143


# ----------------------------------------------------------------- real processes

# The demo's tiny variant with a few more steps, so that a signal sent after the first
# checkpoint of a phase lands in the middle of it.
_STEPS = ["--config.block.num_steps=6", "--config.finetune.num_steps=6"]


def _kajax_args(workdir, data_dir):
  # A short heartbeat timeout bounds how long a survivor can wait for a dead peer.
  return ["--config=configs/demo.py:tiny", f"--workdir={workdir}",
          f"--config.data_dir={data_dir}", *_STEPS, "--heartbeat_timeout_seconds=20"]


def _checkpoint_exists(workdir, phase, step):
  return lambda: os.path.isdir(os.path.join(workdir, "checkpoints", phase, str(step)))


def _student_variables(workdir):
  from kajax import export
  return jax.device_get(export.load_student(os.path.join(workdir, "student"))[1])


@pytest.mark.slow
def test_hosts_that_do_not_share_the_workdir_fail_early(tmp_path):
  # Each host gets its own local directory: they cannot see each other's files.
  run = multiprocess_runner.Processes(
      lambda i: ["--config=configs/demo.py:tiny", f"--workdir={tmp_path / f'host{i}'}"],
      2, 1, str(tmp_path), "split", cwd=REPO)
  try:
    codes = run.wait(300)
  finally:
    run.close()
  assert codes == [1, 1]
  for i in range(2):
    assert "Process(es) [1] do not see the workdir" in run.output(i), run.output(i)[-3000:]
    assert "gs:// path or a shared filesystem" in run.output(i)
