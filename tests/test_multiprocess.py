"""A real multi-process job on one machine: 2 processes x 4 CPU devices.

`launch.sh local-multiprocess 2` starts two `python -m experiments.main`
processes joined by `jax.distributed` (CPU collectives over gloo), each with
4 simulated CPU devices: one 8-device mesh across the two processes, which
is what a 2-host pod runs. The smoke DDPM trains 2 steps, stops, and a
second launch resumes it from the checkpoint to step 4 (both processes save
and restore). Beside it, one process with 8 devices trains the same config
for 4 steps uninterrupted.

Each host reads only its shard of the training slices (every 2nd slice,
shuffled with its own seed; genjax.data.pipeline), so a global batch of the
2-process job is [host 0's 4 examples, host 1's 4 examples]. The one-process
reference is fed exactly that: the two hosts' streams, concatenated. Then
the losses and gradient norms logged at every step and the final checkpoints
must agree to round-off (the cross-process sums run in another order), which
they would not if a host read the other's shard, or the whole split.

Only process 0 may write the TensorBoard events and the figures: events
carry the writer's pid in their name, and every Python-level write of the
processes is recorded (an audit hook in a sitecustomize on PYTHONPATH).
"""

import json
import os
import re
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch.sh")

# Global batch 8 over the 8 devices; 2 steps, then resumed to 4.
_FLAGS = ("--config.train.batch_size=8", "--config.eval.batch_size=8",
          "--config.train.ckpt_every=2", "--config.train.log_every=1",
          "--config.train.sample_every=4")

# Loaded by every Python process started with the test's PYTHONPATH: records
# (pid, path) of each file opened for writing, and fails on request.
_SITECUSTOMIZE = textwrap.dedent("""
    import os, sys
    if os.environ.get("GENJAX_TEST_FAIL_ARG") in sys.argv:
      os._exit(int(os.environ.get("GENJAX_TEST_FAIL_STATUS", "3")))
    _log = os.environ.get("GENJAX_TEST_WRITE_LOG")
    if _log:
      _fd = os.open(_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
      _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND

      def _hook(event, args):
        if event != "open" or not isinstance(args[0], (str, bytes)):
          return
        path, mode, flags = args
        writes = (any(c in mode for c in "wax+") if mode is not None
                  else bool((flags or 0) & _WRITE))
        if writes:
          path = os.fsdecode(os.path.abspath(path))
          os.write(_fd, f"{os.getpid()}\\t{path}\\n".encode())

      sys.addaudithook(_hook)
""")

# The one-process, 8-device reference: experiments.main with the training
# stream replaced by the 2 hosts' streams side by side. After training it
# waits for a line on stdin (the 2-process job is done), then restores both
# runs' final checkpoints and reports the losses and the largest difference.
_REFERENCE = textwrap.dedent("""
    import json, os, runpy, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, numpy as np
    from absl import flags
    from genjax.data import pipeline

    HOSTS = 2
    host_stream = pipeline.train_iterator

    def two_hosts(data_config, batch_size, *, seed, start_step=0, **unused):
      streams = [host_stream(data_config, batch_size, seed=seed,
                             start_step=start_step, process_index=i,
                             process_count=HOSTS) for i in range(HOSTS)]
      while True:
        parts = [next(s) for s in streams]
        yield {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    pipeline.train_iterator = two_hosts
    from genjax import train
    if hasattr(train, "write_samples"):  # No figures needed here: saves time.
      train.write_samples = lambda *args, **kwargs: None
    workdir, other = sys.argv[1], sys.argv[2]
    sys.argv = ["experiments.main", f"--workdir={workdir}"] + sys.argv[3:]
    try:
      runpy.run_module("experiments.main", run_name="__main__")
    except SystemExit as e:
      if e.code not in (None, 0):
        raise
    print("TRAINED", flush=True)
    sys.stdin.readline()  # The 2-process job has finished.

    from genjax import checkpoints, train
    config = flags.FLAGS.config
    assert len(jax.devices()) == 8, jax.devices()
    states = [checkpoints.load_state(config, w)[1] for w in (workdir, other)]
    worst = 0.0
    for x, y in zip(*(jax.tree.leaves(jax.device_get(s)) for s in states)):
      x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
      if x.size:
        worst = max(worst, float(np.max(np.abs(x - y)))
                    / max(1.0, float(np.max(np.abs(x)))))
    print("RESULT " + json.dumps({
        "steps": [int(s.step) for s in states],
        "leaves": len(jax.tree.leaves(states[0])),
        "max_rel_diff": worst,
        "scalars": {tag: [train.read_scalars(w, tag) for w in (workdir, other)]
                    for tag in ("loss", "grad_norm")},
    }), flush=True)
""")


def _env(tmp_path, **extra):
  """The environment of every subprocess: CPU only, the sitecustomize."""
  site = tmp_path / "site"
  site.mkdir(exist_ok=True)
  (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
  env = dict(os.environ, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="",
             TF_CPP_MIN_LOG_LEVEL="2")
  env["PYTHONPATH"] = os.pathsep.join(
      [str(site), ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                           else []))
  env.update(extra)
  return env


def _launch(num, args, env, timeout):
  """Runs `launch.sh local-multiprocess num CONFIG args`; (result, pids)."""
  result = subprocess.run(
      ["bash", LAUNCH, "local-multiprocess", str(num),
       "configs/ddpm.py:smoke", *args],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
  pids = {int(i): int(p) for i, p in re.findall(
      r"^\+ \[process (\d+), pid (\d+)\]", result.stdout, re.M)}
  return result, pids


def _tail(text, n=4000):
  return text[-n:]


@pytest.fixture(scope="module")
def runs(phantom_data_dir, tmp_path_factory):
  """The 2-process job (2 + 2 resumed steps) and the 1-process reference."""
  tmp = tmp_path_factory.mktemp("multiprocess")
  multi, single = tmp / "two_processes", tmp / "one_process"
  writes = tmp / "writes.tsv"
  data = f"--config.data.data_dir={phantom_data_dir}"
  t0 = time.time()
  # The reference trains while the 2-process job runs (both mostly wait on
  # compilation and imports), then waits for it on stdin. Its output goes to
  # a file: a full pipe would stall it.
  ref_log = tmp / "reference.log"
  with open(ref_log, "w") as log:
    reference = subprocess.Popen(
        [sys.executable, "-c", _REFERENCE, str(single), str(multi),
         "--config=configs/ddpm.py:smoke", data, "--config.train.num_steps=4",
         *_FLAGS],
        cwd=ROOT, env=_env(tmp), stdin=subprocess.PIPE, stdout=log,
        stderr=subprocess.STDOUT, text=True)
  try:
    env = _env(tmp, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               GENJAX_TEST_WRITE_LOG=str(writes))
    launches = []
    for steps in (2, 4):
      t = time.time()
      result, pids = _launch(
          2, [f"--workdir={multi}", data, f"--config.train.num_steps={steps}",
              *_FLAGS], env, timeout=600)
      print(f"launch to step {steps}: {time.time() - t:.1f} s")
      # Kept for a look at a failure: pytest's tmp folders stay a while.
      (tmp / f"launch_to_step_{steps}.log").write_text(
          result.stdout + result.stderr)
      assert result.returncode == 0, (
          f"launch to step {steps} failed:\n{_tail(result.stdout)}\n"
          f"{_tail(result.stderr)}")
      assert sorted(pids) == [0, 1], result.stdout[:2000]
      launches.append((result, pids))
    reference.communicate("done\n", timeout=600)
  finally:
    if reference.poll() is None:
      reference.kill()
      reference.wait()
  out = ref_log.read_text()
  assert reference.returncode == 0 and "RESULT " in out, _tail(out, 8000)
  result = json.loads(out.split("RESULT ", 1)[1].splitlines()[0])
  print(f"2 launches of 2 processes + the reference: {time.time() - t0:.1f} s;"
        f" max relative parameter difference {result['max_rel_diff']:.2e}")
  return {"multi": multi, "single": single, "writes": writes,
          "launches": launches, "result": result}


def test_two_processes_match_one(runs):
  """Same losses and gradient norms at every step, same final checkpoint.

  The smoke UNet's output starts near 0, so the first losses are about
  mean(noise^2) whatever the images; the gradient norms and the parameters
  are what tell the data apart (a plain 1-process run, which shuffles the
  whole split with one seed, logs grad_norm 1.685 at step 1 against the
  2-host 1.710).
  """
  result = runs["result"]
  assert result["steps"] == [4, 4], result["steps"]
  for tag, (single, multi) in result["scalars"].items():
    assert [s for s, _ in single] == [1, 2, 3, 4], (tag, single)
    assert [s for s, _ in multi] == [1, 2, 3, 4], (tag, multi)
    np.testing.assert_allclose([v for _, v in multi], [v for _, v in single],
                               rtol=1e-5, err_msg=tag)
  assert result["leaves"] > 10, result
  # Params, EMA, Adam moments and step, relative to max(1, max |leaf|).
  assert result["max_rel_diff"] < 1e-5, result["max_rel_diff"]


def test_both_processes_restored_and_logged_devices(runs):
  """Both processes resumed from step 2 and reported the 8-device mesh."""
  result, pids = runs["launches"][1]
  for i in (0, 1):
    lines = [l for l in result.stdout.splitlines()
             if l.startswith(f"[process {i}] ")]
    text = "\n".join(lines)
    assert (f"8 x cpu device(s) (4 on this process), process {i} of 2"
            in text), _tail(text)
    assert "Training ddpm from step 2 to 4 on 8 device(s)" in text, (
        _tail(text))
  assert "All 2 processes finished." in result.stdout


def test_only_process_zero_writes_events(runs):
  """One event file per launch, written by that launch's process 0."""
  events = sorted(p.name for p in runs["multi"].glob("events.out.tfevents.*"))
  zero_pids = sorted(pids[0] for _, pids in runs["launches"])
  # events.out.tfevents.<time>.<host>.<pid>.<n>.v2
  writer_pids = sorted(int(name.split(".")[-3]) for name in events)
  assert writer_pids == zero_pids, (events, runs["launches"][0][1],
                                    runs["launches"][1][1])


def test_only_process_zero_writes_files(runs):
  """Outside checkpoints/ (orbax's per-process files), only process 0 wrote."""
  multi = str(runs["multi"])
  others = {pids[1] for _, pids in runs["launches"]}
  written = {}
  for line in runs["writes"].read_text().splitlines():
    pid, path = line.split("\t", 1)
    written.setdefault(int(pid), set()).add(path)
  zero = set().union(*(written.get(pids[0], set())
                       for _, pids in runs["launches"]))
  assert any(p.endswith(".png") for p in zero), sorted(zero)
  assert any(p.endswith("config.json") for p in zero), sorted(zero)
  stray = sorted(p for pid in others for p in written.get(pid, ())
                 if p.startswith(multi + os.sep)
                 and not p.startswith(os.path.join(multi, "checkpoints")))
  assert not stray, f"process 1 wrote {stray}"


def test_launcher_stops_all_when_one_fails(tmp_path):
  """Process 1 exits at start-up: the launcher stops process 0, exits 3."""
  env = _env(tmp_path, GENJAX_TEST_FAIL_ARG="--process_id=1",
             GENJAX_TEST_FAIL_STATUS="3",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  t0 = time.time()
  result, pids = _launch(2, [f"--workdir={tmp_path / 'w'}"], env,
                         timeout=120)
  assert result.returncode == 3, _tail(result.stdout) + _tail(result.stderr)
  assert "Process 1" in result.stderr and "stopping the others" in (
      result.stderr), result.stderr
  assert time.time() - t0 < 60
  try:
    os.kill(pids[0], 0)
  except ProcessLookupError:
    pass  # Gone, as it should be.
  else:
    pytest.fail(f"process 0 (pid {pids[0]}) is still running")


def test_launcher_rejects_a_bad_process_count():
  result = subprocess.run(["bash", LAUNCH, "local-multiprocess", "two",
                           "configs/ddpm.py:smoke"],
                          cwd=ROOT, capture_output=True, text=True,
                          timeout=30)
  assert result.returncode == 2
  assert "N must be a positive integer, got 'two'" in result.stderr


@pytest.mark.parametrize("args,message", [
    ((None, 2, 0), "coordinator_address missing"),
    (("localhost:1234", None, None), "num_processes, process_id missing"),
    (("localhost:1234", 2, 2),
     "--process_id=2 must be in [0, --num_processes=2)"),
    (("localhost", 2, 0), "must be host:port"),
])
def test_distributed_flags_are_checked(args, message):
  """Wrong multi-process flags fail before jax.distributed is touched."""
  from genjax import parallel  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=re.escape(message)):
    parallel.initialize_distributed(*args)
