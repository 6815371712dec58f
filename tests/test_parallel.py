"""Data-parallel train step: none / sharding / pmap give the global weighted loss.

The reference is written here independently: plain ``jax.grad`` of
``sum(w * l) / sum(w)`` over the whole batch (Gaussian NLL written out),
applied with an optax chain built here from the same config values.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from hypuc_jax import config as config_lib
from hypuc_jax import parallel, train

N_STEPS = 3
FEATURES = 6
BATCH = 32
RTOL = 1e-5


def _config(**extra):
  overrides = {"model.kind": "mlp", "model.widths": "16,16", "train.warmup_steps": 0,
               "train.lr": 1e-2, "train.grad_clip": 1.0, "train.weight_decay": 1e-3}
  overrides.update(extra)
  return config_lib.apply_overrides(config_lib.get_config("tiny"),
                                    [f"{k}={v}" for k, v in overrides.items()])


def _batches(n_devices):
  """Batches whose weights differ by orders of magnitude between devices."""
  rng = np.random.default_rng(0)
  per = BATCH // n_devices
  out = []
  for _ in range(N_STEPS):
    x = rng.normal(size=(BATCH, FEATURES)).astype(np.float32)
    y = (x[:, 0] * 2 + rng.normal(size=BATCH)).astype(np.float32)
    w = np.repeat(10.0 ** np.linspace(-2, 2, n_devices), per).astype(np.float32)
    w *= rng.uniform(0.5, 1.5, size=BATCH).astype(np.float32)
    mask = np.ones(BATCH, np.float32)
    mask[-1] = 0.0                                      # one padded example
    out.append({"x": x, "y": y, "w": w, "mask": mask})
  return out


def _run(mode, config, batches):
  graphdef, state, schedule = train.create_train_state(config, (FEATURES,), 10)
  placement = parallel.Placement(mode)
  state = placement.put_state(state)
  step = placement.compile_step(train.bind_train_step(
      graphdef, train.LossSpec.from_config(config), schedule))
  for batch in batches:
    state, metrics = step(state, placement.put_batch(batch))
  model, _ = nnx.merge(graphdef, jax.device_get(placement.get_state(state)))
  return jax.device_get(nnx.state(model, nnx.Param)), jax.device_get(metrics)


def _reference(config, batches, n_groups=1):
  """Independent reference; ``n_groups > 1`` gives the WRONG mean of group means.

  ``config.loss.beta`` > 0: each NLL times stop_gradient(sigma^(2 beta)) (beta-NLL).
  """
  graphdef, state, _ = train.create_train_state(config, (FEATURES,), 10)
  model, _ = nnx.merge(graphdef, state)
  gdef, params, rest = nnx.split(model, nnx.Param, ...)
  t = config.train
  lr = optax.cosine_decay_schedule(t.lr, 10, alpha=0.0)
  tx = optax.chain(optax.clip_by_global_norm(t.grad_clip),
                   optax.adamw(lr, weight_decay=t.weight_decay))
  opt_state = tx.init(params)

  def loss_fn(params, batch):
    pred = nnx.merge(gdef, params, rest)(batch["x"])
    mu, s = pred.loc, pred.scale
    nll = 0.5 * jnp.log(2 * jnp.pi) + jnp.log(s) + 0.5 * ((batch["y"] - mu) / s) ** 2
    nll = nll * jax.lax.stop_gradient(s ** (2 * config.loss.beta))
    w = batch["w"] * batch["mask"]
    groups = [slice(i * BATCH // n_groups, (i + 1) * BATCH // n_groups)
              for i in range(n_groups)]
    return jnp.mean(jnp.stack([jnp.sum(w[g] * nll[g]) / jnp.sum(w[g]) for g in groups]))

  for batch in batches:
    grads = jax.grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
  return jax.device_get(params)


def _rel_diff(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    assert np.shape(x) == np.shape(y)
  return max(float(np.linalg.norm(np.asarray(x) - np.asarray(y)) /
                   max(np.linalg.norm(np.asarray(y)), 1e-12)) for x, y in zip(la, lb))


@pytest.fixture(scope="module")
def results(n_devices):
  assert n_devices == 8
  config = _config()
  batches = _batches(n_devices)
  runs = {mode: _run(mode, config, batches) for mode in ("none", "sharding", "pmap")}
  return config, batches, runs


def test_modes_agree_with_full_batch_reference(results):
  config, batches, runs = results
  ref = _reference(config, batches)
  for mode, (params, _) in runs.items():
    assert _rel_diff(params, ref) < RTOL, mode
  assert _rel_diff(runs["sharding"][0], runs["none"][0]) < RTOL
  assert _rel_diff(runs["pmap"][0], runs["none"][0]) < RTOL


def test_beta_nll_step_matches_reference(results, n_devices):
  """loss.beta reaches the step: none and sharding equal the beta-NLL reference,
  which is far from the plain-NLL run."""
  _, batches, runs = results
  config = _config(**{"loss.beta": 0.5})
  ref = _reference(config, batches)
  assert _rel_diff(runs["none"][0], ref) > 100 * RTOL
  for mode in ("none", "sharding"):
    params, _ = _run(mode, config, batches)
    assert _rel_diff(params, ref) < RTOL, mode


def test_float64_weights_under_x64_give_the_reference_step(results):
  """x64 mode: float64 weights (what fit_weighting returns for float64 labels)
  leave the float32 parameters float32 and the step that of the reference."""
  config, batches, _ = results
  ref = _reference(config, batches)
  with jax.enable_x64(True):
    b64 = [dict(b, w=b["w"].astype(np.float64)) for b in batches]
    for mode in ("none", "sharding", "pmap"):
      params, _ = _run(mode, config, b64)
      assert {np.asarray(v).dtype for v in jax.tree.leaves(params)} == {np.dtype(np.float32)}
      assert _rel_diff(params, ref) < RTOL, mode


def test_mean_of_device_means_is_detected(results, n_devices):
  """The wrong reduction (pmean of per-device weighted means) is far off."""
  config, batches, runs = results
  wrong = _reference(config, batches, n_groups=n_devices)
  right = _reference(config, batches)
  assert _rel_diff(wrong, right) > 100 * RTOL
  for mode, (params, _) in runs.items():
    assert _rel_diff(params, wrong) > 100 * RTOL, mode


def test_reported_loss_is_global_weighted_mean(results):
  config, batches, runs = results
  ref_params = _reference(config, batches[:-1])
  # Loss of the last step is evaluated at the params after N_STEPS - 1 steps.
  graphdef, state, _ = train.create_train_state(config, (FEATURES,), 10)
  model, _ = nnx.merge(graphdef, state)
  nnx.update(model, ref_params)
  b = batches[-1]
  pred = model(b["x"])
  s = np.asarray(pred.scale, np.float64)
  nll = 0.5 * np.log(2 * np.pi) + np.log(s) + 0.5 * ((b["y"] - np.asarray(pred.loc)) / s) ** 2
  w = b["w"] * b["mask"]
  expected = np.sum(w * nll) / np.sum(w)
  for mode, (_, metrics) in runs.items():
    assert np.shape(metrics["loss"]) == ()
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-4, err_msg=mode)
    np.testing.assert_allclose(metrics["weight_sum"], np.sum(w), rtol=1e-5, err_msg=mode)
    assert metrics["finite"] == 1.0


@pytest.mark.parametrize("mode", ["none", "sharding", "pmap"])
def test_no_retrace_after_first_step(mode):
  config = _config()
  graphdef, state, schedule = train.create_train_state(config, (FEATURES,), 10)
  placement = parallel.Placement(mode)
  state = placement.put_state(state)
  step = placement.compile_step(train.bind_train_step(
      graphdef, train.LossSpec.from_config(config), schedule))
  before = train.TRACE_COUNTS["train_step"]
  for batch in _batches(8) * 2:
    with jax.transfer_guard("disallow"):
      state, _ = step(state, placement.put_batch(batch))
  assert train.TRACE_COUNTS["train_step"] - before == 1


def test_nonfinite_step_keeps_state_and_flags():
  config = _config()
  graphdef, state, schedule = train.create_train_state(config, (FEATURES,), 10)
  placement = parallel.Placement("sharding")
  state = placement.put_state(state)
  before = jax.device_get(state)
  step = placement.compile_step(train.bind_train_step(
      graphdef, train.LossSpec.from_config(config), schedule), donate=False)
  bad = dict(_batches(8)[0])
  bad["x"] = bad["x"].copy()
  bad["x"][3, 2] = np.nan
  new_state, metrics = step(state, placement.put_batch(bad))
  assert float(metrics["finite"]) == 0.0
  for a, b in zip(jax.tree.leaves(jax.device_get(new_state)), jax.tree.leaves(before)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode", ["none", "sharding", "pmap"])
def test_padded_rows_count_for_nothing_even_when_not_finite(mode):
  """A NaN in a padded row (mask 0) used to reach the gradients through the backward
  pass (0 * NaN) and skip the step. Reference: the same step with finite values in
  those rows, and the independent jax.grad reference on the batch."""
  config = _config()
  batches = _batches(8)
  bad = []
  for b in batches:
    b = {k: v.copy() for k, v in b.items()}
    b["x"][-1] = np.nan
    b["y"][-1], b["w"][-1] = np.inf, np.nan
    bad.append(b)
  params, metrics = _run(mode, config, bad)
  assert float(metrics["finite"]) == 1.0
  want, _ = _run(mode, config, batches)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)
  assert _rel_diff(params, _reference(config, batches)) < RTOL


def test_a_batch_of_zero_weight_changes_nothing():
  """sum(w) = 0 made loss and gradients 0, but AdamW's momentum and weight decay still
  moved the parameters (and the step count)."""
  config = _config()
  graphdef, state, schedule = train.create_train_state(config, (FEATURES,), 10)
  placement = parallel.Placement("none")
  step = placement.compile_step(train.bind_train_step(
      graphdef, train.LossSpec.from_config(config), schedule), donate=False)
  state, _ = step(state, placement.put_batch(_batches(8)[0]))    # momentum built up
  before = jax.device_get(state)
  zero = dict(_batches(8)[1], w=np.zeros(BATCH, np.float32))
  new_state, metrics = step(state, placement.put_batch(zero))
  assert float(metrics["weight_sum"]) == 0.0 and float(metrics["loss"]) == 0.0
  for a, b in zip(jax.tree.leaves(jax.device_get(new_state)), jax.tree.leaves(before)):
    np.testing.assert_array_equal(a, b)


def test_a_negative_weight_is_a_failed_step_not_a_silent_one():
  """Under jit w >= 0 is not checked: all-negative weights gave a negative loss, a
  'finite' step and no change; mixed signs trained on the negative weights. A kept
  row with a negative weight now fails the step (finite 0, state kept); a padded
  row's weight is ignored."""
  config = _config()
  graphdef, state, schedule = train.create_train_state(config, (FEATURES,), 10)
  placement = parallel.Placement("pmap")
  state = placement.put_state(state)
  before = jax.device_get(placement.get_state(state))
  step = placement.compile_step(train.bind_train_step(
      graphdef, train.LossSpec.from_config(config), schedule), donate=False)
  batch = _batches(8)[0]
  mixed = dict(batch, w=batch["w"].copy())
  mixed["w"][3] = -1.0                                   # on one device only
  new_state, metrics = step(state, placement.put_batch(mixed))
  assert float(np.ravel(metrics["finite"])[0]) == 0.0
  for a, b in zip(jax.tree.leaves(jax.device_get(placement.get_state(new_state))),
                  jax.tree.leaves(before)):
    np.testing.assert_array_equal(a, b)
  padded = dict(batch, w=batch["w"].copy())
  padded["w"][-1] = -5.0                                 # mask 0 there
  _, metrics = step(state, placement.put_batch(padded))
  assert float(np.ravel(metrics["finite"])[0]) == 1.0


def test_placement_rejects_unknown_mode():
  with pytest.raises(ValueError, match="mode"):
    parallel.Placement("data_parallel")


@pytest.mark.parametrize("mode", ["sharding", "pmap"])
def test_a_batch_that_does_not_split_over_the_devices_is_named(mode):
  """A batch of 12 on 8 devices raised jax's IndivisibleError (sharding) or a
  numpy reshape error (pmap); a hand-built step now hears what to change."""
  n = len(jax.local_devices())
  placement = parallel.Placement(mode)
  batch = {"x": np.zeros((n + 4, 3), np.float32), "w": np.ones(n + 4, np.float32)}
  with pytest.raises(ValueError, match=rf"batch: parallel mode '{mode}' splits the leading "
                                       rf"\(batch\) axis over {n} local devices; expected a "
                                       rf"multiple of {n}, got shape \({n + 4}"):
    placement.put_batch(batch)
  good = placement.put_batch({k: v[:n] for k, v in batch.items()})
  assert good["x"].size == n * 3
  assert parallel.Placement("none").put_batch(batch)["x"].shape == (n + 4, 3)



@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_pmap_devices_draw_their_own_dropout_masks(n_devices, dropout):
  """Every device gets the same examples. Were the replicated dropout key used as
  is, every device would draw the same mask and the pmap step would equal a plain
  step on one copy of the examples (as it must without dropout: the control).
  Folded with the device index, the masks differ, so the steps differ; the keys in
  the returned state stay replicated."""
  config = _config(**{"model.dropout": dropout})
  graphdef, state, schedule = train.create_train_state(config, (FEATURES,), 10)
  rng = np.random.default_rng(5)
  per = BATCH // n_devices
  one = {"x": rng.normal(size=(per, FEATURES)).astype(np.float32),
         "y": rng.normal(size=per).astype(np.float32),
         "w": np.ones(per, np.float32), "mask": np.ones(per, np.float32)}
  tiled = {k: np.concatenate([v] * n_devices) for k, v in one.items()}
  want = [jax.random.key_data(k) for k in jax.tree.leaves(state) if parallel._is_key(k)]
  out = {}
  for mode, batch in (("pmap", tiled), ("none", one)):
    placement = parallel.Placement(mode)
    step = placement.compile_step(train.bind_train_step(
        graphdef, train.LossSpec.from_config(config), schedule))
    fresh = jax.tree.map(lambda a: a.copy(), state)          # steps donate their input
    new, _ = step(placement.put_state(fresh), placement.put_batch(batch))
    out[mode] = jax.device_get(placement.get_state(new))
  params = [jax.tree.leaves(nnx.state(nnx.merge(graphdef, out[m])[0], nnx.Param))
            for m in ("pmap", "none")]
  diff = max(float(np.max(np.abs(a - b))) for a, b in zip(*params))
  if dropout == 0.0:
    assert diff < 1e-6
  else:
    assert diff > 1e-4
  keys = [jax.random.key_data(k) for k in jax.tree.leaves(out["pmap"]) if parallel._is_key(k)]
  assert len(keys) == len(want) and (len(want) == 1 or dropout == 0.0)   # dropout stream
  for a, b in zip(keys, want):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("env, match", [
    ({"HYPUC_NUM_PROCESSES": "2"}, "HYPUC_COORDINATOR"),
    ({"HYPUC_NUM_PROCESSES": "two"}, "HYPUC_NUM_PROCESSES: expected an integer, got 'two'"),
    ({"HYPUC_NUM_PROCESSES": "2", "HYPUC_COORDINATOR": "h:1"}, "HYPUC_PROCESS_ID"),
])
def test_multi_process_environment_errors_name_the_variable(monkeypatch, env, match):
    for name in ("HYPUC_NUM_PROCESSES", "HYPUC_COORDINATOR", "HYPUC_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=match):
        parallel.maybe_initialize_distributed()


def test_pmap_step_gives_an_in_batch_loss_the_global_batch():
  """BMC's logits span the whole batch (Ren et al. 2022). The pmap step used to compute
  it on each device's slice; it must equal the single-device step."""
  cfg = config_lib.apply_overrides(config_lib.get_config("tiny"), [
      "model.kind=mlp", "model.widths=16,16", "train.warmup_steps=0", "train.lr=1e-2",
      "loss.name=bmc"])
  rng = np.random.default_rng(0)
  x = rng.normal(size=(32, 6)).astype(np.float32)
  batch = {"x": x, "y": (2 * x[:, 0] + rng.normal(size=32)).astype(np.float32),
           "w": rng.uniform(0.5, 2.0, 32).astype(np.float32), "mask": np.ones(32, np.float32)}
  out = {}
  for mode in ("none", "pmap"):
    graphdef, state, schedule = train.create_train_state(cfg, (6,), 10)
    placement = parallel.Placement(mode)
    step = placement.compile_step(train.bind_train_step(graphdef, train.LossSpec.from_config(cfg),
                                                        schedule))
    _, metrics = step(placement.put_state(state), placement.put_batch(batch))
    out[mode] = (float(metrics["loss"]), float(metrics["grad_norm"]))
  np.testing.assert_allclose(out["pmap"], out["none"], rtol=1e-5)


@pytest.mark.parametrize("key, shape", [("y", (BATCH, 1)), ("w", (BATCH - 1,))])
def test_a_wrong_batch_shape_names_the_batch_entries(key, shape):
  # chex said only "input 0 has rank 2"
  config = _config()
  graphdef, state, schedule = train.create_train_state(config, (FEATURES,), 10)
  placement = parallel.Placement("none")
  step = placement.compile_step(train.bind_train_step(
      graphdef, train.LossSpec.from_config(config), schedule))
  batch = dict(_batches(1)[0])
  batch[key] = np.ones(shape, np.float32)
  with pytest.raises(AssertionError, match=r'batch\["y"\], batch\["w"\], batch\["mask"\]: '
                                           r'expected'):
    step(placement.put_state(state), placement.put_batch(batch))
