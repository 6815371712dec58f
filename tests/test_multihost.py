"""Multi-process data parallelism, for real: 2 local processes x 2 CPU devices,
under both the "sharding" (mesh) and the "pmap" step.

Two subprocesses run ``train.train_and_evaluate`` into ONE workdir per step as a
2-process JAX job (coordinator on 127.0.0.1; gloo CPU collectives, the JAX
0.10 default, so nothing is set), each process feeding its half of every
global batch; a third subprocess runs
the same config as one process with the same 4 devices. Each process trains
the "sharding" run and then the "pmap" run (one JAX start, one distributed
runtime per process for both). The reference is
the single-process run: same global batch, same data order, same
step (mode), so the two differ only in how XLA orders the cross-device
reductions. Subprocesses are needed because the device count and the
distributed runtime are fixed when a process first initialises JAX (this
pytest session already has 8 devices).
"""
import json
import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from hypuc_jax import checkpoints, train
from hypuc_jax.config import apply_overrides, get_config

N, TIME, LEADS = 96, 32, 12
WORKER = os.path.join(os.path.dirname(__file__), "multihost_worker.py")
OVERRIDES = ["train.steps=6", "train.batch_size=16", "train.eval_batch_size=24",
             "train.checkpoint_every=3", "train.eval_every=3", "train.log_every=2",
             "train.keep_checkpoints=3"]
#: Seconds a worker may take before it is presumed hung (a crashed peer leaves
#: the other blocked in a collective); generous, it only turns a hang into a failure.
HANG_TIMEOUT = 400
#: The steps each process trains, in this order.
MODES = ("sharding", "pmap")


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(spec, root, out, local_devices, overrides, **env):
  environ = {k: v for k, v in os.environ.items()
             if not k.startswith(("HYPUC_", "JAX_", "XLA_"))}
  # the test session's compiler flags (conftest.py), but not its 8 devices
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if "xla_force_host_platform_device_count" not in f]
  environ.update(JAX_PLATFORMS="cpu", HYPUC_LOCAL_DEVICES=str(local_devices),
                 XLA_FLAGS=" ".join(flags), **env)
  return subprocess.Popen([sys.executable, WORKER, spec, str(root), str(out), ",".join(MODES),
                           *overrides],
                          env=environ, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _wait_all(procs: dict) -> None:
  """Waits for every worker; on a failure or hang kills the rest and reports all output."""
  logs, failed = {}, False
  for name, proc in procs.items():
    try:
      logs[name] = proc.communicate(timeout=None if failed else HANG_TIMEOUT)[0]
    except subprocess.TimeoutExpired:
      proc.kill()
      logs[name] = proc.communicate()[0] + f"\n[killed after {HANG_TIMEOUT} s]"
    failed = failed or proc.returncode != 0
    if failed:
      for other in procs.values():
        if other.poll() is None:
          other.kill()
  if failed:
    report = "\n".join(f"===== {name} (exit {procs[name].returncode}) =====\n{log[-4000:]}"
                       for name, log in logs.items())
    raise AssertionError(f"a worker failed:\n{report}")


def _listing(root) -> set[str]:
  """Files under ``root``; random orbax chunk names (how many chunks varies) and the
  TensorBoard file name become placeholders."""
  names = (os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
  return set(re.sub(r"^tb/events\.out\.tfevents\..*$", "tb/EVENTS",
                       re.sub(r"/d/[0-9a-f]{32}$", "/d/CHUNK", n)) for n in names)


def _params(workdir, config):
  """Params + meta of the latest checkpoint, restored here (independently of the workers)."""
  graphdef, template, _ = train.create_train_state(config, (TIME, LEADS), 1)
  store = checkpoints.CheckpointStore(os.path.join(workdir, "checkpoints"),
                                      keep=config.train.keep_checkpoints,
                                      fingerprint=train.fingerprint(config))
  step = store.latest_step()
  steps = store.all_steps()
  state, meta = store.restore(step, template)
  store.close()
  model, _ = nnx.merge(graphdef, state)
  return jax.device_get(nnx.state(model, nnx.Param)), meta, sorted(steps)


def test_two_processes_equal_one_process_with_the_same_devices(tmp_path):
  rng = np.random.default_rng(3)
  x = rng.normal(size=(N, TIME, LEADS)).astype(np.float32)
  y = (4.5 + 0.8 * x[:, :8, 0].mean(axis=1) + 0.1 * rng.normal(size=N)).astype(np.float32)
  np.savez(tmp_path / "ecg.npz", x=x, y=y)
  spec = f"npz:{tmp_path / 'ecg.npz'}"
  coordinator = f"127.0.0.1:{_free_port()}"
  procs = {f"process {i}": _launch(spec, tmp_path / "multi", tmp_path / f"p{i}", 2, OVERRIDES,
                                   HYPUC_NUM_PROCESSES="2", HYPUC_COORDINATOR=coordinator,
                                   HYPUC_PROCESS_ID=str(i)) for i in range(2)}
  procs["single"] = _launch(spec, tmp_path / "single", tmp_path / "single", 4, OVERRIDES)
  _wait_all(procs)
  for parallel in MODES:
    _check_mode(tmp_path, spec, parallel)


def _check_mode(tmp_path, spec, parallel):
  """The multi-process run of one step against the single-process one."""
  multi, single = tmp_path / "multi" / parallel, tmp_path / "single" / parallel
  overrides = [*OVERRIDES, f"train.parallel={parallel}"]
  p0, p1, ref = (json.load(open(tmp_path / f"{n}-{parallel}.json"))
                 for n in ("p0", "p1", "single"))
  # Really one 2-process job over 4 devices, and the reference has the same 4.
  assert [(p["process_index"], p["process_count"], p["device_count"], p["local_device_count"])
          for p in (p0, p1, ref)] == [(0, 2, 4, 2), (1, 2, 4, 2), (0, 1, 4, 4)]
  assert p0["steps"] == p1["steps"] == ref["steps"] == 6
  assert p0["best_step"] == p1["best_step"] == ref["best_step"]

  # Only process 0 wrote: the multi-process workdir has the single run's files
  # (orbax names its data chunks by random hashes, their number varies, and the
  # TensorBoard file is named by time: those are compared as placeholders), no orbax
  # ``ocdbt.process_1`` part, one TensorBoard event file (each writer creates
  # its own), and every metrics record once.
  assert _listing(multi) == _listing(single)
  assert not any("process_1" in name for name in _listing(multi))
  assert len(os.listdir(multi / "tb")) == 1
  records = [json.loads(line) for line in open(multi / "metrics.jsonl")]
  ref_records = [json.loads(line) for line in open(single / "metrics.jsonl")]
  assert [(r["step"], r["split"]) for r in records] == [(r["step"], r["split"])
                                                        for r in ref_records]

  # Same numbers as the single-process run. Both runs see the same global
  # batches (process p holds rows [8p, 8p+8) of each, the rows the single
  # process puts on devices 2p, 2p+1) and run the same step; only the
  # summation order of the cross-device all-reduce may differ (float32
  # rounding, ~1e-7 relative), so the logged train losses agree to 1e-4.
  # Adam divides each gradient component by its own running RMS, which
  # amplifies that rounding in components whose per-device contributions
  # cancel: measured after 6 steps, median |diff| 2e-7, max 4e-5. The bound
  # 5e-4 is a sixth of one step's largest update (lr 3e-3); a wrong batch
  # slice would move most parameters by ~lr, which the median bound (1e-5)
  # and the loss check catch. Val metrics / predictions (label units,
  # measured <= 4e-5 relative / 2e-5 absolute) get 1e-3.
  config = apply_overrides(get_config("tiny"), [f"data.spec={spec}", *overrides])
  params_m, meta_m, steps_m = _params(str(multi), config)
  params_s, meta_s, steps_s = _params(str(single), config)
  assert steps_m == steps_s == [3, 6]
  diff = np.concatenate([np.abs(np.asarray(a) - np.asarray(b)).ravel()
                         for a, b in zip(jax.tree.leaves(params_m), jax.tree.leaves(params_s))])
  assert np.max(diff) < 5e-4 and np.median(diff) < 1e-5, (np.max(diff), np.median(diff))
  assert meta_m["best_step"] == meta_s["best_step"]
  for r, q in zip(records, ref_records):
    if r["split"] == "train":
      np.testing.assert_allclose(r["loss"], q["loss"], rtol=1e-4, err_msg=f"loss at {r['step']}")
    else:
      np.testing.assert_allclose(r["nll"], q["nll"], rtol=1e-3, err_msg=f"val nll at {r['step']}")
  for key in ("mae", "mse", "nll"):
    # Every process reports the same (all-gathered) validation metrics ...
    assert p0["final_val"][key] == p1["final_val"][key]
    np.testing.assert_allclose(p0["final_val"][key], ref["final_val"][key], rtol=1e-3)
  # ... and the predictions file covers the whole val / test split in order.
  for split in ("val", "test"):
    pm, ps = np.load(multi / f"predictions_{split}.npz"), np.load(single / f"predictions_{split}.npz")
    np.testing.assert_array_equal(pm["y"], ps["y"])
    np.testing.assert_allclose(pm["mu"], ps["mu"], rtol=0, atol=1e-3)
    np.testing.assert_allclose(pm["sigma"], ps["sigma"], rtol=0, atol=1e-3)
