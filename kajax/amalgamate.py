"""Amalgamation end to end: the four steps of *Student Becoming the Master* in one run.

1. initialise the student from the teachers (trunk from the parsing teacher, one branch per
   teacher copied from its tail);
2. block-wise amalgamation: train trunk + gates through the teachers' frozen tails with a
   branch point drawn per teacher and step (``WORKDIR/checkpoints/block``);
3. branch search on held-out unaugmented images (``WORKDIR/branch_search.json``);
4. end-to-end fine-tuning of the fixed-branch student (``WORKDIR/checkpoints/finetune``),
   then pruned export (``WORKDIR/student``) and evaluation against the teachers
   (``WORKDIR/results.json``, ``results.md``, ``samples.png``).

Teachers (``kajax.teacher_setup``) are SegNets or exported students (option B); any number of
them goes through the same code, one branch point per teacher.

Rerunning the same command after a kill resumes: each phase restores its latest checkpoint,
a finished branch search is read back, finished phases are skipped.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from kajax import (amalgamation_steps as steps, branch_search, checkpointing, data_sources,
                   export, host_memory, input_pipeline, multihost, optim, parallel, results,
                   step_parallelism, storage, student_init, student_model, student_spec, tasks,
                   teacher_setup, teacher_targets, teacher_views, train_teacher, training_logs,
                   training_loop)


@dataclasses.dataclass
class Run:
  """Everything the phases share, built once from the config."""
  config: ml_collections.ConfigDict
  workdir: str
  mesh: Any
  teachers: dict[str, teacher_setup.Teacher]  # by teacher name, in branch order
  teacher_vars: Any  # {teacher name: variables}, replicated on the mesh; the frozen argument.
  spec: student_spec.StudentSpec
  projection_fns: dict[str, Any]  # by task
  lambdas: dict[str, float]  # by task
  data_dir: str
  writer: training_logs.Writer
  # The views each teacher target averages (config.loss.teacher_flip_average, teacher_shifts).
  target_views: teacher_views.TeacherViews = teacher_views.PLAIN
  # {task: (N, H, W, C) float32} over the unlabelled split, computed at first use when
  # --config.loss.teacher_targets='precomputed' (kajax.teacher_targets).
  targets: dict[str, np.ndarray] | None = None

  @property
  def teacher_models(self) -> tuple[Any, ...]:
    return self.spec.teachers

  @property
  def teacher_names(self) -> tuple[str, ...]:
    return self.spec.teacher_names

  def source(self, split: str) -> Any:
    return data_sources.open_split(self.config.dataset, self.data_dir, split)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Clear errors for config mistakes before anything is trained."""
  names = tuple(config.tasks)
  if len(names) < 2:
    raise ValueError(f"--config.tasks={names}: amalgamation needs at least two tasks.")
  twice = sorted({t for t in names if names.count(t) > 1})
  if twice:
    raise ValueError(f"--config.tasks={names} names {twice} twice; list each task once.")
  if not config.teachers:
    raise ValueError("--config.teachers is empty; give one block (dir=...) per teacher.")
  for key in ("loss.kinds", "loss.lambdas"):
    block = config
    for part in key.split("."):
      block = block[part]
    missing, extra = set(names) - set(block), set(block) - set(names)
    if missing or extra:
      raise ValueError(f"--config.{key} must have exactly one entry per task {names}; "
                       f"missing {sorted(missing)}, unexpected {sorted(extra)}.")
  if config.block.schedule not in steps.BLOCK_SCHEDULES:
    raise ValueError(f"--config.block.schedule={config.block.schedule!r}: choose one of "
                     f"{steps.BLOCK_SCHEDULES}.")
  if config.block.get("path", "drawn_path") not in steps.BLOCK_PATHS:
    raise ValueError(f"--config.block.path={config.block.path!r}: choose one of "
                     f"{steps.BLOCK_PATHS}.")
  teacher_targets.check_mode(config.loss.get("teacher_targets", "per_step"))
  teacher_views.from_config(config.loss)  # raises on a malformed teacher_shifts
  step_parallelism.check_config(config)


def setup(config: ml_collections.ConfigDict, workdir: str) -> Run:
  """Loads teachers, builds the student spec, losses and mesh."""
  validate_config(config)
  mesh = parallel.make_mesh()
  multihost.log_runtime(mesh)
  parallel.check_batch_size(config.batch_size, mesh)
  loaded = teacher_setup.load_teachers(config, workdir)
  spec = student_spec.StudentSpec(tuple(t.model for t in loaded.values()),
                                  gate_form=config.gate_form,
                                  trunk_task=config.get("trunk_task") or None,
                                  input_coords=config.get("input_coords"))
  data_dir = data_sources.resolve_data_dir(config.data_dir)
  extras = spec.extras()
  fns = {}
  for t in spec.tasks:
    options = {}
    if tasks.get(t).class_logits:
      kind = config.loss.kinds[t]
      if tasks.accepts_option(t, kind, "temperature"):
        options["temperature"] = config.loss.temperature
      weights = _teacher_class_weights(config, t, loaded, mesh, data_dir)
      if weights is not None:
        if not tasks.accepts_option(t, kind, "class_weights"):
          raise ValueError(
              f"--config.loss.kinds.{t}={kind!r} cannot weight classes, but "
              f"--config.loss.seg_class_weighting={config.loss.seg_class_weighting!r} asks "
              "for it; set one of them differently.")
        options["class_weights"] = weights
    fns[t] = tasks.projection_fn(t, config.loss.kinds[t], extras[t],
                                 config_key=f"--config.loss.kinds.{t}", **options)
  return Run(config=config, workdir=workdir, mesh=mesh, teachers=loaded,
             teacher_vars=parallel.replicate({n: tc.variables for n, tc in loaded.items()},
                                             mesh),
             spec=spec, projection_fns=fns, target_views=teacher_views.from_config(config.loss),
             lambdas={t: float(config.loss.lambdas[t]) for t in spec.tasks},
             data_dir=data_dir, writer=training_logs.Writer(workdir))


def _teacher_class_weights(config: ml_collections.ConfigDict, task: str,
                           loaded: dict[str, teacher_setup.Teacher], mesh: Any,
                           data_dir: str) -> np.ndarray | None:
  """Pixel weights of a class-logit task's KL, from the *teacher's* class frequencies.

  ``loss.seg_class_weighting='teacher_median_freq_sqrt'``: (median freq / freq) ** 0.5 of the
  teacher's argmax over up to ``loss.class_weight_images`` unlabelled images — the same
  balancing a parsing teacher is trained with, so rare classes keep their share of the signal
  (plain KL lets the student trade them for pixel accuracy). Uses no labels.
  """
  if config.loss.get("seg_class_weighting", "none") == "none":
    return None
  teacher = next(tc for tc in loaded.values() if task in tc.tasks)
  c = teacher.model.num_outputs_by_task[task]

  @jax.jit
  def class_counts(variables, batch):
    # Counted on device: the result is small and replicated, so every host can read it.
    pred = jnp.argmax(teacher.model.outputs(variables, batch["image"])[task], -1)
    pred = jnp.where(batch["mask"][:, None, None], pred, c)  # padding -> an extra bin
    return jnp.bincount(pred.reshape(-1), length=c + 1)[:c]

  source = data_sources.open_split(config.dataset, data_dir, config.unlabeled_split)
  counts = np.zeros(c, np.int64)
  variables = parallel.replicate(teacher.variables, mesh)
  for local in input_pipeline.make_eval_iterator(source, config.input,
                                                 global_batch_size=config.eval_batch_size,
                                                 images_only=True):
    counts += np.asarray(jax.device_get(class_counts(variables,
                                                     parallel.global_batch(local, mesh))))
    # Images seen so far, from the global counts: the same number on every host.
    if counts.sum() // np.prod(local["image"].shape[1:3]) >= config.loss.class_weight_images:
      break
  return train_teacher.weights_from_counts(counts, 0.5)


def _checkpointer(run: Run, phase: str) -> checkpointing.Checkpointer:
  return checkpointing.Checkpointer(storage.join(run.workdir, "checkpoints", phase),
                                    run.config.max_checkpoints_to_keep)


def _train_iterator(run: Run, seed: int, *, finished: bool = False) -> Any:
  """The phase's batches. ``finished``: the phase's checkpoint is at its last step, so no
  batch will be drawn and the precomputed targets are not worth computing (resuming a
  finished run only restores and evaluates)."""
  # Images only: the student never sees a label (docs/method.md §1).
  return input_pipeline.make_train_iterator(
      _unlabeled_source(run, with_targets=not finished), run.config.input,
      global_batch_size=run.config.batch_size, seed=seed, images_only=True)


def _phase_finished(ckpt: checkpointing.Checkpointer, num_steps: int) -> bool:
  # Broadcast: finding it finished skips the targets' computation, a collective.
  return multihost.broadcast_decision((ckpt.latest_step() or 0) >= num_steps)


def _unlabeled_source(run: Run, *, with_targets: bool = True) -> Any:
  """The unlabelled split, with each image's teacher targets when they are precomputed."""
  c = run.config
  source = run.source(c.unlabeled_split)
  if c.loss.get("teacher_targets", "per_step") == "per_step" or not with_targets:
    return source
  if run.targets is None:
    run.targets = teacher_targets.compute(
        source, functools.partial(steps.teacher_outputs, teacher_models=run.teacher_models,
                                  dtype=step_parallelism.compute_dtype(c),
                                  views=run.target_views),
        run.teacher_vars, run.mesh, input_config=c.input, batch_size=c.eval_batch_size)
  return teacher_targets.WithTargets(source, run.targets)


def _points_text(names: tuple[str, ...], points: Any) -> str:
  return ", ".join(f"{t}={int(k)}" for t, k in zip(names, points))


def check_recorded_search(config: ml_collections.ConfigDict, names: tuple[str, ...],
                          search: dict[str, Any], workdir: str) -> tuple[int, ...]:
  """The recorded branch points, if this config would choose the same ones; else an error.

  ``names`` are the run's teachers (one branch point each). A rerun must not silently
  fine-tune other branch points than it asks for (a changed ``--config.branch.override`` or
  ``tau``), nor apply a choice made for other teachers.
  """
  path = storage.join(workdir, branch_search.RESULT_FILE)
  start_over = (f"To choose again (the block-wise phase is kept and the table recomputed), "
                f"delete the choice and the fine-tuning: rm -r {path} "
                f"{storage.join(workdir, 'checkpoints', 'finetune')}; or use a new --workdir.")
  recorded_names = tuple(search.get("teachers", search.get("tasks", ())))
  if recorded_names != names:
    raise ValueError(f"{path} was made for teachers {recorded_names}, this config has "
                     f"{names}. {start_over}")
  recorded = tuple(int(search["branch_points"][t]) for t in names)
  override = branch_search.parse_override(config.branch.override, names)
  if override is not None:
    wanted, why = override, f"--config.branch.override={config.branch.override}"
  else:
    table = np.array([search["losses"][t] for t in names])
    wanted = branch_search.choose_branch_points(table, config.branch.tau)
    why = f"the rule with --config.branch.tau={config.branch.tau} on the recorded table"
  if wanted != recorded:
    raise ValueError(
        f"{path} chose branch points {_points_text(names, recorded)} "
        f"({search.get('selected_by', 'recorded')}), but this run asks for "
        f"{_points_text(names, wanted)} ({why}). To keep the recorded choice, rerun "
        f"without changing --config.branch.*. {start_over}")
  return recorded


def _check_checkpoint_points(run: Run, ckpt: checkpointing.Checkpointer,
                             branch_points: tuple[int, ...]) -> None:
  """Refuses to resume fine-tuning of a student with other branch points (other shapes)."""
  meta = ckpt.restore_meta()
  if meta is None or "branch_points" not in meta:
    return
  saved = tuple(int(k) for k in meta["branch_points"])
  if saved != tuple(branch_points):
    names = run.teacher_names
    raise ValueError(
        f"{ckpt.directory} holds fine-tuning (step {ckpt.latest_step()}) of a student with "
        f"branch points {_points_text(names, saved)}, but this run fine-tunes "
        f"{_points_text(names, branch_points)}: their parameters differ in shape and cannot "
        f"be resumed. To fine-tune the new branch points, delete the old fine-tuning: rm -r "
        f"{ckpt.directory}; to continue the old one, rerun with "
        f"--config.branch.override={','.join(str(k) for k in saved)} (and delete "
        f"{storage.join(run.workdir, branch_search.RESULT_FILE)} if it disagrees).")


def _resume(ckpt: checkpointing.Checkpointer, state: Any, train_iter: Any) -> Any:
  try:
    restored = ckpt.restore(state)
  except ValueError as e:  # Orbax: tree structure or shapes differ from the saved state.
    reason = str(e).strip().splitlines()[0]
    raise ValueError(
        f"Cannot resume from {ckpt.directory} (step {ckpt.latest_step()}): the saved state "
        "does not fit the student this config builds (other teachers, tasks, gate_form or "
        f"branch points?). Start this phase over with rm -r {ckpt.directory}, or use a new "
        f"--workdir. Orbax says: {reason}") from e
  if restored is None:
    return state
  state, meta = restored
  input_pipeline.restore_iterator(train_iter, meta["data_iterator"])
  multihost.log("Resumed %s at step %d from %s", meta["phase"], int(state.step),
                ckpt.directory)
  return state


def _student_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """BatchNorm device axis (pmap), compute dtype and encoder remat of the trained student."""
  return {"bn_axis_name": step_parallelism.bn_axis_name(config),
          "dtype": step_parallelism.compute_dtype(config), "remat": config.get("remat", False)}


def _compile(step: Any, config: ml_collections.ConfigDict) -> Any:
  """A bound amalgamation step compiled as ``config.parallelism`` says (state donated)."""
  return step_parallelism.compile_train_step(step, config.get("parallelism", "jit"),
                                             batch_argnum=2)


def block_phase(run: Run) -> Any:
  """Step 2. Returns the trained trunk variables (encoder, trunk blocks, all gates)."""
  c = run.config
  trunk = student_model.StudentTrunk(run.spec, **_student_options(c))
  variables = student_init.init_trunk_from_teachers(
      run.spec, {n: tc.variables for n, tc in run.teachers.items()},
      jax.random.key(c.seed))
  tx = optim.make_optimizer(c.optimizer, c.block.num_steps)
  state = parallel.replicate(optim.create_train_state(variables, tx), run.mesh)
  ckpt = _checkpointer(run, "block")
  train_iter = _train_iterator(run, c.seed,
                               finished=_phase_finished(ckpt, c.block.num_steps))
  state = _resume(ckpt, state, train_iter)
  jitted = _compile(functools.partial(
      steps.block_train_step, trunk=trunk, teacher_models=run.teacher_models,
      projection_fns=run.projection_fns, lambdas=run.lambdas,
      tx=tx, num_steps=c.block.num_steps, schedule=c.block.schedule,
      block_path=c.block.get("path", "drawn_path"),
      grad_accum_steps=c.get("grad_accum_steps", 1),
      target_views=run.target_views), c)
  rng = jax.random.key(c.seed + 1)
  state = training_loop.run("block", lambda s, b: jitted(s, run.teacher_vars, b, rng), state,
                   train_iter, run.mesh,
                   training_loop.LoopConfig(c.block.num_steps, c.log_every, c.checkpoint_every,
                                            c.batch_size),
                   ckpt, run.writer,
                   learning_rate=optim.learning_rate_schedule(c.optimizer, c.block.num_steps))
  ckpt.close()
  return state.variables


def branch_phase(run: Run, trunk_variables: Any) -> tuple[tuple[int, ...], np.ndarray]:
  """Step 3: the teachers x 5 loss table on held-out unaugmented images, and the choice."""
  c = run.config
  fn = jax.jit(functools.partial(
      steps.branch_losses, trunk=student_model.StudentTrunk(
          run.spec, dtype=step_parallelism.compute_dtype(c)),
      teacher_models=run.teacher_models, projection_fns=run.projection_fns,
      target_views=run.target_views))
  totals = None
  source = run.source(c.branch_split)
  for local in input_pipeline.make_eval_iterator(source, c.input,
                                                 global_batch_size=c.eval_batch_size,
                                                 images_only=True):
    part = fn(trunk_variables, run.teacher_vars, parallel.global_batch(local, run.mesh))
    totals = part if totals is None else jax.tree_util.tree_map(jnp.add, totals, part)
  totals = jax.device_get(totals)
  # Divided once over the whole split: the training loss of the split as one batch.
  table = steps.branch_table(totals, run.teacher_models, run.lambdas)
  count = int(totals["images"])
  override = branch_search.parse_override(c.branch.override, run.teacher_names)
  chosen = override or branch_search.choose_branch_points(table, c.branch.tau)
  if multihost.is_main_process():
    branch_search.save_result(run.workdir, run.teacher_names, table, c.branch.tau, chosen,
                              "override" if override else f"rule (tau={c.branch.tau})")
  multihost.sync("branch search saved")  # Evaluation reads it back on every process.
  text = branch_search.format_table(run.teacher_names, table, chosen)
  run.writer.text(c.block.num_steps, "branch_search", text)
  for t, row in zip(run.teacher_names, table):
    run.writer.scalars(c.block.num_steps, {f"{t}/k{k}": v for k, v in enumerate(row)},
                       "branch_loss/")
  multihost.log("Branch search (projection loss on %d held-out images):\n%s", int(count),
                text)
  return chosen, table


def finetune_phase(run: Run, branch_points: tuple[int, ...], trunk_variables: Any | None
                   ) -> Any:
  """Step 4. Returns the fine-tuned fixed-branch student's variables."""
  c = run.config
  model = student_model.Student(run.spec, branch_points, **_student_options(c))
  ckpt = _checkpointer(run, "finetune")
  _check_checkpoint_points(run, ckpt, branch_points)
  tx = optim.make_optimizer(c.finetune.optimizer, c.finetune.num_steps)
  if trunk_variables is None and ckpt.latest_step() is None:
    raise RuntimeError(f"Fine-tuning cannot start: no block-phase result in {run.workdir}.")
  # When resuming, the initial values are overwritten by the restore; shapes are what count.
  variables = student_init.init_student_from_teachers(
      run.spec, branch_points, {n: tc.variables for n, tc in run.teachers.items()},
      trunk_variables=trunk_variables, rng=jax.random.key(c.seed))
  state = parallel.replicate(optim.create_train_state(variables, tx), run.mesh)
  train_iter = _train_iterator(run, c.seed + 2,
                               finished=_phase_finished(ckpt, c.finetune.num_steps))
  state = _resume(ckpt, state, train_iter)
  jitted = _compile(functools.partial(
      steps.finetune_train_step, model=model, teacher_models=run.teacher_models,
      projection_fns=run.projection_fns, lambdas=run.lambdas, tx=tx,
      grad_accum_steps=c.get("grad_accum_steps", 1),
      target_views=run.target_views), c)
  rng = jax.random.key(c.seed + 3)
  state = training_loop.run("finetune", lambda s, b: jitted(s, run.teacher_vars, b, rng), state,
                   train_iter, run.mesh,
                   training_loop.LoopConfig(c.finetune.num_steps, c.log_every,
                                            c.checkpoint_every, c.batch_size),
                   ckpt, run.writer, meta={"branch_points": list(branch_points)},
                   log_offset=c.block.num_steps,
                   learning_rate=optim.learning_rate_schedule(c.finetune.optimizer,
                                                              c.finetune.num_steps))
  ckpt.close()
  return jax.device_get(state.variables)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) all four steps, exports the pruned student, evaluates everything."""
  workdir = os.fspath(storage.resolve(workdir))
  multihost.check_shared_directory(workdir, "workdir", "--workdir")
  if multihost.is_main_process():
    storage.write_text(storage.join(workdir, "config.json"),
                       config.to_json_best_effort(indent=2))
  teacher_setup.ensure_teachers(config, workdir)
  run = setup(config, workdir)
  run.writer.config(config, ("block/loss", "finetune/loss"))
  # Resume decisions: taken on process 0 and broadcast, so every process runs the same phases.
  finetune_started = multihost.broadcast_decision(
      _checkpointer(run, "finetune").latest_step() is not None)
  searched = multihost.broadcast_decision(branch_search.load_result(workdir) is not None)
  trunk_variables = None
  # host_memory.release() after each phase: a finished phase's executable and buffers would
  # otherwise stay resident through the next one (module docstring of host_memory).
  if not searched:
    trunk_variables = block_phase(run)
    host_memory.release()
    points, _ = branch_phase(run, trunk_variables)
    host_memory.release()
  else:
    search = branch_search.load_result(workdir)
    points = check_recorded_search(config, run.teacher_names, search, workdir)
    multihost.log("Branch points from %s: %s", branch_search.RESULT_FILE, points)
    if not finetune_started:
      # Restores the finished block phase's last checkpoint; runs no further step.
      trunk_variables = block_phase(run)
      host_memory.release()
  variables = finetune_phase(run, points, trunk_variables)
  del trunk_variables
  host_memory.release()
  student_dir = export.save_student(
      storage.join(workdir, "student"), run.spec, points, variables,
      input_pipeline.image_size_and_normalization(config.input,
                                                  run.source(config.unlabeled_split)))
  try:
    return results.evaluate_and_report(run, student_dir)
  finally:
    run.writer.close()


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """``mode=evaluate``: re-evaluates the exported student and the teachers of a workdir."""
  workdir = os.fspath(storage.resolve(workdir))
  multihost.check_shared_directory(workdir, "workdir", "--workdir")
  student_dir = storage.join(workdir, "student")
  if not multihost.broadcast_decision(epath.Path(student_dir).is_dir()):
    raise FileNotFoundError(f"{student_dir} does not exist: run the amalgamation in "
                            f"{workdir} first (same command with --config.mode=amalgamate).")
  run = setup(config, workdir)
  try:
    return results.evaluate_and_report(run, student_dir)
  finally:
    run.writer.close()

