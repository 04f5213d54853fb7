"""Tests of launch/*.sh: the exact commands their --dry_run prints, their argument errors,
and shellcheck (run when the ``shellcheck`` binary is installed, e.g. ``apt-get install
shellcheck``; skipped with that reason otherwise)."""

import os
import shlex
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch")
SCRIPTS = ("tpu_pod.sh", "tpu_setup.sh", "gpu.sh", "common.sh")


def dry_run(script, *args, env=None, cwd=None):
  """Runs ``launch/script --dry_run args`` from ``cwd``; returns (rc, stdout lines, stderr)."""
  full_env = {k: v for k, v in os.environ.items()
              if not k.startswith(("JAX_", "SLURM_", "KAJAX_"))}
  full_env.update(HOME="/home/u", TMPDIR="/tmp", **(env or {}))
  proc = subprocess.run(["bash", os.path.join(LAUNCH, script), "--dry_run", *args],
                        capture_output=True, text=True, env=full_env, cwd=cwd, timeout=60)
  # Lines starting with '#' say when a command runs; the commands are the other lines.
  return (proc.returncode, [l for l in proc.stdout.splitlines() if not l.startswith("#")],
          proc.stderr)


def words(line):
  """A printed command as the shell would split it (checks the quoting, too)."""
  return shlex.split(line)


def test_tpu_pod_commands(tmp_path):
  rc, lines, err = dry_run(
      "tpu_pod.sh", "--tpu=ka", "--zone=us-central2-b", "--accelerator=v4-16",
      "--project=proj", "--data_dir=gs://bkt/tfds", "--", "--config=configs/nyu.py",
      "--workdir=gs://bkt/runs/nyu", "--config.branch.override=1,2",
      "--config.note=two words", cwd=str(tmp_path))
  assert rc == 0, err
  commands = [words(l) for l in lines]
  where = ["--zone=us-central2-b", "--project=proj"]
  tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
  assert commands[0] == tpu + ["describe", "ka"] + where
  assert commands[1] == tpu + ["create", "ka"] + where + ["--accelerator-type=v4-16",
                                                          "--version=tpu-ubuntu2204-base"]
  assert commands[2] == ["git", "-C", REPO, "archive", "--format=tar.gz", "-o",
                         "/tmp/kajax-ka.tar.gz", "HEAD"]
  assert commands[3] == tpu + ["scp", "/tmp/kajax-ka.tar.gz", "ka:kajax.tar.gz"] + where + [
      "--worker=all"]
  assert commands[4][:len(tpu) + 5] == tpu + ["ssh", "ka"] + where + ["--worker=all"]
  assert commands[4][-1].endswith("bash ~/kajax/launch/tpu_setup.sh")
  assert commands[5][:-1] == tpu + ["ssh", "ka"] + where + ["--worker=all"]
  remote = commands[5][-1]
  assert remote.startswith("--command=")
  # What each worker's shell runs: every kajax flag intact, one word each.
  assert words(remote[len("--command="):]) == [
      "cd", "~/kajax", "&&", "TFDS_DATA_DIR=gs://bkt/tfds", "~/kajax_venv/bin/python", "-m",
      "kajax.main", "--jax_distributed", "--config=configs/nyu.py",
      "--workdir=gs://bkt/runs/nyu", "--config.branch.override=1,2", "--config.note=two words"]
  assert len(commands) == 6


@pytest.mark.parametrize("args, message", [
    (["--zone=z", "--", "--workdir=gs://b/r"], "--tpu=NAME is required"),
    (["--tpu=t", "--", "--workdir=gs://b/r"], "--zone=ZONE is required"),
    (["--tpu=t", "--zone=z", "--", "--workdir=/tmp/r"], "must be a gs:// path"),
    (["--tpu=t", "--zone=z"], "give the kajax flags after --"),
    (["--tpu=t", "--zone=z", "--workdir=gs://b/r"], "unknown argument --workdir"),
])
def test_tpu_pod_argument_errors(args, message):
  rc, lines, err = dry_run("tpu_pod.sh", *args)
  assert rc == 2 and message in err and not lines


def test_tpu_setup_commands():
  rc, lines, err = dry_run("tpu_setup.sh", env={"KAJAX_VENV": "/opt/kv"})
  assert rc == 0, err
  assert [words(l) for l in lines] == [
      ["sudo", "apt-get", "update", "-q"],
      ["sudo", "apt-get", "install", "-y", "-q", "python3.11", "python3.11-venv"],
      ["python3.11", "-m", "venv", "/opt/kv"],
      ["/opt/kv/bin/python", "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
      ["/opt/kv/bin/python", "-m", "pip", "install", "--quiet", "-e", REPO + "[tpu]"]]


def test_gpu_one_host():
  rc, lines, err = dry_run("gpu.sh", "--", "--config=configs/demo.py", "--workdir=/tmp/w")
  assert rc == 0, err
  assert [words(l) for l in lines] == [["/home/u/kajax_venv/bin/python", "-m", "kajax.main",
                                        "--config=configs/demo.py", "--workdir=/tmp/w"]]


def test_gpu_several_nodes_from_environment():
  env = {"JAX_COORDINATOR_ADDRESS": "10.1.2.3:1234", "JAX_NUM_PROCESSES": "4",
         "JAX_PROCESS_ID": "3"}
  rc, lines, err = dry_run("gpu.sh", "--setup", "--", "--config=configs/nyu.py",
                           "--workdir=/shared/w", env=env)
  assert rc == 0, err
  assert [words(l) for l in lines] == [
      ["python3.11", "-m", "venv", "/home/u/kajax_venv"],
      ["/home/u/kajax_venv/bin/python", "-m", "pip", "install", "--quiet", "-e",
       REPO + "[cuda]"],
      ["/home/u/kajax_venv/bin/python", "-m", "kajax.main", "--jax_distributed",
       "--coordinator_address=10.1.2.3:1234", "--num_processes=4", "--process_id=3",
       "--config=configs/nyu.py", "--workdir=/shared/w"]]


def test_gpu_slurm_autodetects_and_incomplete_environment_fails():
  rc, lines, _ = dry_run("gpu.sh", "--", "--workdir=/w", env={"SLURM_NTASKS": "2"})
  assert rc == 0 and words(lines[-1])[3:] == ["--jax_distributed", "--workdir=/w"]
  rc, lines, err = dry_run("gpu.sh", "--", "--workdir=/w", env={"JAX_NUM_PROCESSES": "2"})
  assert rc == 2 and "needs JAX_COORDINATOR_ADDRESS" in err and not lines


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck is not installed (apt-get install shellcheck)")
def test_scripts_are_shellcheck_clean():
  proc = subprocess.run(["shellcheck", "-x", *(os.path.join("launch", s) for s in SCRIPTS)],
                        cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stdout + proc.stderr
