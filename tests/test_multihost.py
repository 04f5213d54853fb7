"""Tests of kajax.multihost: helpers in one process, SIGTERM in the training loop, and real
two-process runs of ``python -m kajax.main`` on 127.0.0.1 (``jax.distributed`` with a local
coordinator, 4 fake CPU devices per process, gloo collectives), with no barrier added by the
test: kill and resume, preemption, a failing host, hosts that do not share the workdir, and
the final student compared with a one-process run on 8 devices."""

import json
import os
import re
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kajax import checkpointing, multihost, optim, parallel, training_loop
from tests import multiprocess_runner, tensorboard_events

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU_SCRIPT = os.path.join(REPO, "launch", "gpu.sh")


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
# checkpoint of a phase lands in the middle of it; teachers log every step (the first step's
# loss is compared exactly); SGD instead of Adam (see the comparison at the end for why).
# The branch points are fixed (the search still runs) so that both students have one shape.
_STEPS = ["--config.block.num_steps=6", "--config.finetune.num_steps=6",
          "--config.branch.override=1,2"] + [
    f"--config.teachers.{t}.train_config.log_every=1" for t in ("seg", "depth")] + [
    f"--config.{block}optimizer.{key}" for block in (
        "", "finetune.", "teachers.seg.train_config.", "teachers.depth.train_config.")
    for key in ("name=sgd", "learning_rate=0.02")]


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
def test_two_hosts_kill_resume_and_match_one_host(tmp_path):
  data_dir, two = str(tmp_path / "data"), str(tmp_path / "two_hosts")
  args = _kajax_args(two, data_dir)
  logs = str(tmp_path)
  # Reruns reuse what the first run compiled (JAX's persistent compilation cache). The test
  # keeps its own caches, one for two-process and one for one-process runs: on CPU a program
  # for 2 processes x 4 devices and one for 1 process x 8 devices can be the same module with
  # the same device ids, and the cache's key need not tell them apart.
  env = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache_two_hosts")}
  env_one_host = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache_one_host")}

  # 1. From nothing (data generated by process 0, teachers trained): a host dies mid-phase.
  run = multiprocess_runner.Processes(args, 2, 4, logs, "first", cwd=REPO, extra_env=env)
  try:
    run.wait_for(_checkpoint_exists(two, "block", 2), 900, "the first block checkpoint")
    run.signal(1, signal.SIGKILL)
    codes = run.wait(120)  # The survivor must stop by itself, with an error.
  finally:
    run.close()
  # Process 0 either sees its collective fail (and exits through kajax's failure path or gloo
  # aborts) or is stopped by JAX's coordination service once process 1 misses its heartbeats.
  assert codes[1] == -signal.SIGKILL, run.output(1)[-3000:]
  assert codes[0] not in (0, -signal.SIGKILL), run.output(0)[-3000:]
  # Which of the three reports the survivor: kajax's failure path, JAX's coordination client,
  # or gloo aborting on the closed connection (depends on where process 0 was waiting).
  peer_failure = ("process 0/2 failed", "another task died", "heartbeat timeout",
                  "stopped sending heartbeats", "gloo::")
  assert any(marker in run.output(0) for marker in peer_failure), "\n".join(
      line for line in run.output(0).splitlines()  # absl's error/fatal lines and exceptions.
      if re.match(r"[EF]\d{4} ", line) or "rror" in line or "xception" in line)[-5000:]
  for i in range(2):  # Every process says where it runs.
    assert f"process {i}/2, local/global devices 4/8" in run.output(i)
  assert "Training the seg teacher" in run.output(0)
  assert "Training the seg teacher" not in run.output(1)  # Status lines: process 0 only.

  # 2. The same command: resumes the block phase; then both get SIGTERM (preemption).
  run = multiprocess_runner.Processes(args, 2, 4, logs, "second", cwd=REPO, extra_env=env)
  try:
    run.wait_for(_checkpoint_exists(two, "finetune", 2), 600, "the first finetune checkpoint")
    run.signal(0, signal.SIGTERM)
    run.signal(1, signal.SIGTERM)
    codes = run.wait(120)
  finally:
    run.close()
  assert codes == [multihost.PREEMPTED_EXIT_CODE] * 2, run.output(0)[-3000:]
  assert "Resumed block at step" in run.output(0)
  assert "Training the" not in run.output(0)  # Teachers exist: not trained again.
  assert "preempted (SIGTERM) at step" in run.output(0)

  # 3. Again, now started as the README says for several GPU hosts (launch/gpu.sh with
  # JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID): fine-tuning resumes and the
  # run finishes (evaluation, export).
  run = multiprocess_runner.Processes(args, 2, 4, logs, "third", cwd=REPO, extra_env=env,
                                      gpu_script=GPU_SCRIPT)
  try:
    codes = run.wait(600)
  finally:
    run.close()
  assert codes == [0, 0], run.output(0)[-3000:] + run.output(1)[-3000:]
  assert "Resumed finetune at step" in run.output(0)
  assert "Results on test" in run.output(0) and "Results on test" not in run.output(1)
  with open(os.path.join(two, "results.json")) as f:
    two_results = json.load(f)

  # 4. One process on 8 devices (launch/gpu.sh's one-host form), same config and global
  # batch, never interrupted; and one on 4 devices, to measure what the order of summation
  # alone changes.
  refs = {n: multiprocess_runner.Processes(_kajax_args(str(tmp_path / f"one_host_{n}"),
                                                       data_dir)[:-1],
                                           1, n, logs, f"one{n}", cwd=REPO,
                                           extra_env=env_one_host, gpu_script=GPU_SCRIPT)
          for n in (8, 4)}
  try:
    codes = {n: r.wait(900) for n, r in refs.items()}
  finally:
    for r in refs.values():
      r.close()
  assert codes == {8: [0], 4: [0]}, refs[8].output(0)[-3000:] + refs[4].output(0)[-3000:]
  one, other = str(tmp_path / "one_host_8"), str(tmp_path / "one_host_4")
  with open(os.path.join(one, "results.json")) as f:
    one_results = json.load(f)

  # Same global batches, same initialisation, same forward pass: each teacher's loss on its
  # first batch (before any update) agrees to float precision.
  for t in ("seg", "depth"):
    first = [tensorboard_events.scalars(os.path.join(w, "teacher_runs", t, "tensorboard"),
                                        f"teacher_{t}/loss")[1] for w in (two, one)]
    assert first[0] == pytest.approx(first[1], rel=1e-5), (t, first)
  # After training, 2 hosts x 4 devices differ from 1 host x 8 devices no more than 1 host x 4
  # devices does. Exact equality is out of reach for any change in the number of devices:
  # sums over devices in another order change activations by ~1e-7, which flips max-pooling
  # argmaxes between near-equal values and so routes some gradients elsewhere (measured on the
  # first step of the depth teacher: gradient norm 9.5528 on 8 devices, 9.5071 on 4, 9.5580 on
  # 2 processes x 4); Adam would add +-lr moves of the zero-gradient biases in front of
  # BatchNorm, hence SGD here.
  a, b, c = (_student_variables(w) for w in (two, one, other))
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)

  def max_difference(x, y):
    return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
               for u, v in zip(jax.tree_util.tree_leaves(x), jax.tree_util.tree_leaves(y)))

  two_vs_one, order_alone = max_difference(a, b), max_difference(c, b)
  assert two_vs_one <= 2 * order_alone + 1e-5, (two_vs_one, order_alone)
  # Evaluation and export agree as well, within what the parameters' spread allows.
  assert two_results["branch_points"] == one_results["branch_points"] == {"seg": 1, "depth": 2}
  for metric, value in one_results["models"]["student"].items():
    assert two_results["models"]["student"][metric] == pytest.approx(value, rel=0.1, abs=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("private, message", [
    ("workdir", "Process(es) [1] do not see the workdir"),
    ("data_dir", "Hosts do not see the same synthetic_rooms/tiny"),
])
def test_hosts_that_do_not_share_a_directory_fail_early(tmp_path, private, message):
  def args(i):  # Each host gets its own local `private` directory: it cannot see the other's.
    dirs = {"workdir": tmp_path / "work", "data_dir": tmp_path / "data"}
    dirs[private] = tmp_path / f"{private}{i}"
    return ["--config=configs/demo.py:tiny", f"--workdir={dirs['workdir']}",
            f"--config.data_dir={dirs['data_dir']}"]

  run = multiprocess_runner.Processes(args, 2, 1, str(tmp_path), "split", cwd=REPO)
  try:
    codes = run.wait(600)
  finally:
    run.close()
  assert codes == [1, 1], run.output(0)[-3000:]
  for i in range(2):  # Both stop, both say why and what to do.
    assert message in run.output(i), run.output(i)[-3000:]
    assert "gs://" in run.output(i) and "shared filesystem" in run.output(i)
