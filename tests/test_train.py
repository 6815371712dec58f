"""train_and_evaluate end to end, kill-and-resume, refusal of a foreign workdir,
NaN handling, bad input."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from hypuc_jax import checkpoints, parallel, train, train_data, train_state
from hypuc_jax import data as data_lib
from hypuc_jax.config import apply_overrides, get_config

N, TIME, LEADS = 160, 64, 12


@pytest.fixture(scope="module")
def npz_spec(tmp_path_factory):
  """A small signal data set whose label depends on the signal."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(N, TIME, LEADS)).astype(np.float32)
  y = (4.5 + 0.8 * x[:, :8, 0].mean(axis=1) + 0.1 * rng.normal(size=N)).astype(np.float32)
  path = tmp_path_factory.mktemp("data") / "ecg.npz"
  np.savez(path, x=x, y=y)
  return f"npz:{path}"


def _npz_config(spec, *extra):
  return apply_overrides(get_config("tiny"), [
      f"data.spec={spec}", "train.steps=8", "train.batch_size=16", "train.eval_batch_size=32",
      "train.checkpoint_every=4", "train.eval_every=4", "train.log_every=2",
      "train.keep_checkpoints=3", *extra])


def _params(workdir, config, step=None):
  """Model params of a stored checkpoint (latest by default), restored independently."""
  graphdef, template, _ = train.create_train_state(config, (TIME, LEADS), 1)
  store = checkpoints.CheckpointStore(os.path.join(workdir, "checkpoints"),
                                      keep=config.train.keep_checkpoints,
                                      fingerprint=train.fingerprint(config))
  step = store.latest_step() if step is None else step
  state, meta = store.restore(step, template)
  store.close()
  model, _ = nnx.merge(graphdef, state)
  return jax.device_get(nnx.state(model, nnx.Param)), meta, step


def test_end_to_end_tiny_simulated(tmp_path, capsys):
  config = get_config("tiny")
  traces = train.TRACE_COUNTS["train_step"]
  result = train.train_and_evaluate(config, str(tmp_path))
  assert train.TRACE_COUNTS["train_step"] - traces <= 1     # no retrace after step 1
  assert result.steps == config.train.steps
  assert capsys.readouterr().out == ""                        # stdout is not a terminal
  for key in ("config", "scaler", "weighting", "metrics", "predictions_val",
              "predictions_test"):
    assert os.path.exists(result.paths[key]), key
  assert os.listdir(result.paths["tb"])
  records = [json.loads(line) for line in open(result.paths["metrics"])]
  train_records = [r for r in records if r["split"] == "train"]
  assert [r["step"] for r in train_records] == [4, 6, 8, 12]     # log_every 4 + eval steps
  _, schedule = train_state.make_optimizer(config, config.train.steps)   # optax's schedule
  for r in train_records:
    assert {"loss", "lr", "grad_norm", "examples_per_s"} <= set(r)
    assert np.isfinite(r["loss"]) and r["lr"] > 0
    # the lr of the logged step (step k applies schedule(k - 1)), not a window mean
    assert r["lr"] == pytest.approx(float(schedule(r["step"] - 1)), rel=1e-5)   # f32 vs f64
  assert [r["step"] for r in records if r["split"] == "val"] == [6, 12]
  # Predictions are in label units and cover the split (reference: load + split here).
  from hypuc_jax import data
  ds = data.load(config.data.spec)
  parts = data.split_indices(len(ds.y), config.data.seed, config.data.split)
  pred = np.load(result.paths["predictions_test"])
  np.testing.assert_allclose(pred["y"], ds.y[np.sort(parts["test"])], rtol=1e-6)
  assert np.all(pred["sigma"] > 0) and np.all(np.isfinite(pred["mu"]))
  assert 2.0 < np.mean(pred["mu"]) < 7.0                      # potassium, mmol/L
  # predict() restores the best checkpoint and reproduces the stored predictions.
  mu, sigma = train.predict(str(tmp_path), ds.x[np.sort(parts["test"])])
  np.testing.assert_allclose(mu, pred["mu"], rtol=1e-5)
  np.testing.assert_allclose(sigma, pred["sigma"], rtol=1e-5)
  # The reported best val NLL is the Gaussian NLL of the stored val predictions.
  val = np.load(result.paths["predictions_val"])
  z = (val["y"] - val["mu"]) / val["sigma"]
  nll = np.mean(0.5 * np.log(2 * np.pi) + np.log(val["sigma"]) + 0.5 * z ** 2)
  np.testing.assert_allclose(result.best_metrics["nll"], nll, rtol=1e-4)


def test_val_score_matches_scipy_likelihoods():
  rng = np.random.default_rng(0)
  y, mu = rng.normal(5, 1, 50), rng.normal(5, 1, 50)
  sigma, w = rng.uniform(0.2, 2, 50), rng.uniform(0.1, 5, 50)
  for head, per in (("gaussian", -stats.norm.logpdf(y, mu, sigma)),
                    ("laplace", -stats.laplace.logpdf(y, mu, sigma / np.sqrt(2))),
                    ("point", (y - mu) ** 2)):
    got = train_data.val_score(head, y, mu, None if head == "point" else sigma, w)
    assert got["nll"] == pytest.approx(np.mean(per), rel=1e-12)
    assert got["weighted_nll"] == pytest.approx(np.average(per, weights=w), rel=1e-12)
    assert got["mae"] == pytest.approx(np.mean(np.abs(y - mu)), rel=1e-12)
    unweighted = train_data.val_score(head, y, mu, None if head == "point" else sigma)
    assert unweighted["weighted_nll"] == pytest.approx(unweighted["nll"], rel=1e-12)


def _scipy_hypuc_weights(y_train, y, lam):
  """SPEC weights 1/rho^lam (Scott bandwidth, exact KDE via scipy), mean 1 on
  the training labels; labels outside the training range take the edge's weight."""
  s = np.std(y_train, ddof=1)
  kde = stats.gaussian_kde(y_train, bw_method=1.06 * len(y_train) ** -0.2)
  assert kde.factor * s == pytest.approx(1.06 * s * len(y_train) ** -0.2)
  raw = lambda v: kde(np.clip(v, y_train.min(), y_train.max())) ** -lam
  return raw(y) / np.mean(raw(y_train))


def test_checkpoint_selection_follows_select_on(tmp_path, npz_spec):
  """The best checkpoint minimises the chosen validation score over every
  evaluation; the weighted score is the training objective on validation
  (scipy KDE weights on the validation labels, recomputed here)."""
  from hypuc_jax import data
  ds = data.load(npz_spec)
  base = _npz_config(npz_spec, "weighting.lam=1.0", "train.steps=24", "train.eval_every=2",
                     "train.checkpoint_every=2", "train.keep_checkpoints=1", "train.lr=1e-2")
  parts = data.split_indices(len(ds.y), base.data.seed, base.data.split)
  y_train = np.asarray(ds.y[parts["train"]], np.float64)
  best = {}
  for select_on in ("weighted_nll", "nll"):
    wd = tmp_path / select_on
    result = train.train_and_evaluate(apply_overrides(base, [f"train.select_on={select_on}"]),
                                      str(wd))
    val = [r for r in map(json.loads, open(wd / "metrics.jsonl")) if r["split"] == "val"]
    assert [r["step"] for r in val] == list(range(2, 25, 2))
    scores = [r[select_on] for r in val]
    assert result.best_step == val[int(np.argmin(scores))]["step"]
    assert result.best_metrics[select_on] == pytest.approx(min(scores))
    # The stored val predictions come from the best checkpoint; its scores, recomputed.
    pred = np.load(wd / "predictions_val.npz")
    per = -stats.norm.logpdf(pred["y"], pred["mu"], pred["sigma"])
    w = _scipy_hypuc_weights(y_train, np.asarray(pred["y"], np.float64), 1.0)
    assert result.best_metrics["nll"] == pytest.approx(np.mean(per), rel=1e-4)
    assert result.best_metrics["weighted_nll"] == pytest.approx(np.average(per, weights=w),
                                                                rel=2e-3, abs=2e-3)
    best[select_on] = result.best_step
  assert best["weighted_nll"] != best["nll"]        # the two criteria disagree in this run


@pytest.mark.parametrize("apply", ["loss", "resample"])
def test_kill_and_resume_equals_uninterrupted(tmp_path, npz_spec, apply):
  config = _npz_config(npz_spec, f"weighting.apply={apply}")
  full = tmp_path / "full"
  train.train_and_evaluate(config, str(full))
  part = tmp_path / "part"
  first = train.train_and_evaluate(config, str(part), stop_after=4)
  assert first.steps == 4
  p_mid, _, step = _params(str(part), config)
  assert step == 4
  second = train.train_and_evaluate(config, str(part))            # resumes at 4
  assert second.steps == 8
  p_full, meta_full, s_full = _params(str(full), config)
  p_part, meta_part, s_part = _params(str(part), config)
  assert s_full == s_part == 8
  for a, b in zip(jax.tree.leaves(p_part), jax.tree.leaves(p_full)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert meta_full["best_step"] == meta_part["best_step"]
  assert any(np.max(np.abs(a - b)) > 1e-4
             for a, b in zip(jax.tree.leaves(p_mid), jax.tree.leaves(p_full)))


def test_stop_between_evaluations_adds_no_evaluation(tmp_path, npz_spec):
  """Stopping at a step that is not an evaluation step saves a checkpoint there but
  evaluates nothing, so best step, early stopping and the result equal an
  uninterrupted run (here early stopping after one evaluation without progress)."""
  config = _npz_config(npz_spec, "train.eval_every=3", "train.checkpoint_every=7",
                       "train.early_stopping_patience=1", "train.lr=3e-2")
  full = train.train_and_evaluate(config, str(tmp_path / "full"))
  first = train.train_and_evaluate(config, str(tmp_path / "part"), stop_after=5)
  assert first.steps == 5 and _params(str(tmp_path / "part"), config)[2] == 5
  val_steps = [r["step"] for r in map(json.loads, open(tmp_path / "part" / "metrics.jsonl"))
               if r["split"] == "val"]
  assert val_steps == [3]                                   # none at the stop (step 5)
  part = train.train_and_evaluate(config, str(tmp_path / "part"))
  assert (part.steps, part.best_step, part.stopped_early) == (
      full.steps, full.best_step, full.stopped_early)
  p_full, _, _ = _params(str(tmp_path / "full"), config, full.best_step)
  p_part, _, _ = _params(str(tmp_path / "part"), config, part.best_step)
  for a, b in zip(jax.tree.leaves(p_part), jax.tree.leaves(p_full)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("change", ["train.eval_every=2", "train.early_stopping_patience=3"])
def test_a_run_with_checkpoints_keeps_the_keys_that_select_its_model(tmp_path, npz_spec,
                                                                     change):
  """eval_every and early_stopping_patience are outside the resume fingerprint but decide
  which checkpoint becomes the model: resuming with another value made a hybrid of the
  two and rewrote config.json to claim the new one. Refused while checkpoints exist
  (config.json untouched); before the first checkpoint, or with overwrite, allowed."""
  config = _npz_config(npz_spec, "train.eval_every=3", "train.early_stopping_patience=1")
  changed = apply_overrides(config, [change])
  part = tmp_path / "part"
  train.train_and_evaluate(config, str(part), stop_after=4)
  before = (part / "config.json").read_text()
  key = change.split("=")[0]
  with pytest.raises(ValueError, match=rf"^{key}: stored (3|1), now (2|3): the checkpoints"):
    train.train_and_evaluate(changed, str(part))
  assert (part / "config.json").read_text() == before
  name, value = key.split(".")[1], int(change.split("=")[1])
  assert train.train_and_evaluate(changed, str(part), overwrite=True).steps > 4
  assert json.loads((part / "config.json").read_text())["train"][name] == value
  fresh = tmp_path / "fresh"
  train.train_and_evaluate(config, str(fresh), stop_after=0)   # config.json, no checkpoint
  assert not checkpoints.has_checkpoints(str(fresh / "checkpoints"))
  assert train.train_and_evaluate(changed, str(fresh)).steps > 0
  assert json.loads((fresh / "config.json").read_text())["train"][name] == value


def test_a_stopped_overwrite_leaves_a_run_the_new_config_resumes(tmp_path, npz_spec,
                                                                 monkeypatch):
  """train_and_evaluate(overwrite=True) stopped after the checkpoint store was reset but
  before the new config.json was written left the old config.json beside the new
  fingerprint; the old config.json now goes first, so the new config trains without
  overwrite (the library and the command line's up-front check agree)."""
  from hypuc_jax import workflow
  old = _npz_config(npz_spec)
  new = apply_overrides(old, ["train.lr=1e-2"])
  train.train_and_evaluate(old, str(tmp_path), stop_after=4)
  real = train.create_train_state

  def stop(*args, **kwargs):
    raise KeyboardInterrupt
  monkeypatch.setattr(train, "create_train_state", stop)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(new, str(tmp_path), overwrite=True)
  monkeypatch.setattr(train, "create_train_state", real)
  assert not (tmp_path / "config.json").exists()
  workflow.check_trainable(new, tmp_path)
  assert train.train_and_evaluate(new, str(tmp_path)).steps == 8
  assert json.loads((tmp_path / "config.json").read_text())["train"]["lr"] == 1e-2


def test_a_resumed_run_logs_the_training_records_of_an_uninterrupted_one(tmp_path, npz_spec):
  # a stop between two records used to write an extra record there, and the
  # next record then averaged only the steps after the resume
  config = _npz_config(npz_spec, "train.log_every=3")

  def records(d):
    rows = [json.loads(line) for line in open(d / "metrics.jsonl")]
    return [{k: v for k, v in r.items() if k != "examples_per_s"} for r in rows]

  train.train_and_evaluate(config, str(tmp_path / "full"))
  for stop in (1, 1, 3):                          # steps 1, 2 and 5: none is a log step
    train.train_and_evaluate(config, str(tmp_path / "part"), stop_after=stop)
  train.train_and_evaluate(config, str(tmp_path / "part"))
  full, part = records(tmp_path / "full"), records(tmp_path / "part")
  assert [r["step"] for r in full if r["split"] == "train"] == [3, 4, 6, 8]
  assert len(part) == len(full)
  for a, b in zip(part, full):
    assert a.keys() == b.keys() and a["step"] == b["step"]
    for k in a:
      want = b[k] if isinstance(b[k], str) else pytest.approx(b[k], rel=1e-5, abs=1e-7)
      assert a[k] == want, (a["step"], k)


def test_resampled_training_batches_follow_the_weights(npz_spec):
  """apply=resample: unit loss weights, rows drawn in proportion to the KDE
  weights (so the weighted label mean matches, reference computed here);
  scheme none resamples nothing: the plain shuffle of apply=loss."""
  config = _npz_config(npz_spec, "weighting.lam=1.0")
  run = train_data.prepare(config)
  y_train = run.y[run.idx["train"]]
  w = np.asarray(run.weighting(y_train), np.float64)
  g = lambda v: (v - np.mean(y_train)) ** 2                  # the weights favour both tails
  target = np.sum(w * g(y_train)) / np.sum(w)                # E_w[g(y)], closed form
  sd = np.sqrt(np.sum(w * (g(y_train) - target) ** 2) / np.sum(w))
  per_epoch = len(y_train) // 16
  it = train_data.train_batches(run, 0, 16, seed=0, apply="resample")
  batches = [next(it) for _ in range(400 * per_epoch)]
  assert all(np.all(b["w"] == 1.0) for b in batches)
  drawn = g(run.inverse_y(np.concatenate([b["y"] for b in batches])))
  assert np.mean(drawn) > 1.5 * np.mean(g(y_train))          # the draw is not uniform
  assert abs(np.mean(drawn) - target) < 5 * sd / np.sqrt(len(drawn))
  plain = apply_overrides(config, ["weighting.scheme=none"])
  run0 = train_data.prepare(plain)
  a = train_data.train_batches(run0, 0, 16, seed=0, apply="resample")
  b = train_data.train_batches(run0, 0, 16, seed=0, apply="loss")
  for _ in range(2 * per_epoch):
    np.testing.assert_array_equal(next(a)["y"], next(b)["y"])
  with pytest.raises(ValueError, match="apply: expected one of \\('loss', 'resample'\\), got 'Resample'"):
    train_data.train_batches(run, 0, 16, seed=0, apply="Resample")


def test_deferred_weighting_batches(npz_spec):
  """weighting.defer: the batches of steps 1..k carry weight 1, the rest the
  KDE weights of the same rows (scipy reference); a resume at any step
  continues the same sequence."""
  config = _npz_config(npz_spec, "weighting.lam=1.0")
  run = train_data.prepare(config)
  y_train = np.asarray(run.y[run.idx["train"]], np.float64)
  n, k = 20, 7                                        # 2+ epochs of 9 batches
  plain = train_data.train_batches(run, 0, 16, seed=3)
  plain = [next(plain) for _ in range(n)]
  deferred = train_data.train_batches(run, 0, 16, seed=3, unweighted_steps=k)
  deferred = [next(deferred) for _ in range(n)]
  for step, (a, b) in enumerate(zip(plain, deferred), 1):
    np.testing.assert_array_equal(a["y"], b["y"])
    np.testing.assert_array_equal(a["x"], b["x"])
    y = np.asarray(run.inverse_y(b["y"]), np.float64)
    expected = np.ones(16) if step <= k else _scipy_hypuc_weights(y_train, y, 1.0)
    np.testing.assert_allclose(b["w"], expected, rtol=2e-3)
  for start in (3, 7, 12):
    resumed = train_data.train_batches(run, start, 16, seed=3, unweighted_steps=k)
    for b in deferred[start:]:
      np.testing.assert_array_equal(next(resumed)["w"], b["w"])
  with pytest.raises(ValueError, match="unweighted_steps: expected 0 with apply='resample'"):
    train_data.train_batches(run, 0, 16, seed=3, apply="resample", unweighted_steps=k)


def test_deferred_weighting_trains_unweighted_then_weighted(tmp_path, npz_spec):
  """defer 0.5 of 8 steps: the parameters at step 4 equal an unweighted run's
  (the same batches, weight 1), later ones differ; the evaluations of the
  unweighted phase are logged but never the run's model, and a resume
  inside that phase equals the uninterrupted run. Without a weighting (scheme
  none) defer has no effect."""
  common = ["weighting.lam=1.0", "train.eval_every=2", "train.checkpoint_every=2",
            "train.keep_checkpoints=8", "train.lr=3e-2"]
  deferred = _npz_config(npz_spec, *common, "weighting.defer=0.5")
  plain = _npz_config(npz_spec, *common, "weighting.scheme=none")
  weighted = _npz_config(npz_spec, *common)
  result = train.train_and_evaluate(deferred, str(tmp_path / "d"))
  plain_result = train.train_and_evaluate(plain, str(tmp_path / "p"))
  # without a weighting defer changes nothing, the selection included
  none_deferred = apply_overrides(plain, ["weighting.defer=0.5"])
  assert plain_result.best_step <= 4                   # inside the deferred phase
  assert (train.train_and_evaluate(none_deferred, str(tmp_path / "n")).best_metrics
          == plain_result.best_metrics)
  train.train_and_evaluate(weighted, str(tmp_path / "w"))
  for step, same_as_plain in ((2, True), (4, True), (6, False), (8, False)):
    p_d = jax.tree.leaves(_params(str(tmp_path / "d"), deferred, step)[0])
    p_p = jax.tree.leaves(_params(str(tmp_path / "p"), plain, step)[0])
    p_w = jax.tree.leaves(_params(str(tmp_path / "w"), weighted, step)[0])
    gap = max(np.max(np.abs(a - b)) for a, b in zip(p_d, p_p))
    assert (gap < 1e-6) == same_as_plain, (step, gap)
    assert max(np.max(np.abs(a - b)) for a, b in zip(p_d, p_w)) > 1e-4
  val = [r for r in map(json.loads, open(tmp_path / "d" / "metrics.jsonl"))
         if r["split"] == "val"]
  assert [r["step"] for r in val] == [2, 4, 6, 8]
  later = [r for r in val if r["step"] > 4]
  assert min(r["nll"] for r in val) < min(r["nll"] for r in later)   # step 4 was better
  assert result.best_step == later[int(np.argmin([r["nll"] for r in later]))]["step"]
  part = tmp_path / "part"
  train.train_and_evaluate(deferred, str(part), stop_after=3)
  resumed = train.train_and_evaluate(deferred, str(part))
  assert resumed.best_step == result.best_step
  for a, b in zip(jax.tree.leaves(_params(str(part), deferred)[0]),
                  jax.tree.leaves(_params(str(tmp_path / "d"), deferred)[0])):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_workdir_from_another_config_is_refused(tmp_path, npz_spec):
  config = _npz_config(npz_spec)
  train.train_and_evaluate(config, str(tmp_path))
  other_model = apply_overrides(config, ["model.widths=4,8"])
  with pytest.raises(ValueError, match="different model or config.*model.widths"):
    train.train_and_evaluate(other_model, str(tmp_path))
  other = apply_overrides(config, ["weighting.lam=0.25"])
  with pytest.raises(ValueError, match="different model or config.*weighting.lam"):
    train.train_and_evaluate(other, str(tmp_path))
  # weighting.apply / defer, loss.beta and train.select_on came later: a stored
  # fingerprint without them (an older run directory) opens at their defaults
  # ("loss", 0.0, 0.0, "nll") and is refused for other values.
  fp_path = os.path.join(tmp_path, "checkpoints", "fingerprint.json")
  stored = json.load(open(fp_path))
  assert stored["weighting"].pop("apply") == "loss"
  assert stored["weighting"].pop("defer") == 0.0
  assert stored["loss"].pop("beta") == 0.0
  assert stored["train"].pop("select_on") == "nll"
  json.dump(stored, open(fp_path, "w"))
  for override, now in (("weighting.apply=resample", "weighting.apply: stored None, now 'resample'"),
                        ("weighting.defer=0.5", "weighting.defer: stored None, now 0.5"),
                        ("train.select_on=weighted_nll",
                         "train.select_on: stored None, now 'weighted_nll'")):
    with pytest.raises(ValueError, match=f"different model or config \\({now}\\)"):
      train.train_and_evaluate(apply_overrides(config, [override]), str(tmp_path))
  assert train.train_and_evaluate(config, str(tmp_path)).steps == 8     # resumes: done
  mu, _ = train.predict(str(tmp_path), np.zeros((2, TIME, LEADS), np.float32))
  assert mu.shape == (2,) and np.all(np.isfinite(mu))
  result = train.train_and_evaluate(other, str(tmp_path), overwrite=True)
  assert result.steps == 8
  stored = json.load(open(os.path.join(tmp_path, "config.json")))
  assert stored["weighting"]["lam"] == 0.25


def test_nonfinite_batch_stops_with_last_good_checkpoint(tmp_path, npz_spec, monkeypatch):
  config = _npz_config(npz_spec, "train.checkpoint_every=2", "train.log_every=1",
                       "train.prefetch=0")
  original = train_data.train_batches

  def poisoned(run, start, *args):
    for i, batch in enumerate(original(run, start, *args)):
      if start + i + 1 == 3:                          # step 3 sees a NaN input
        batch = dict(batch, x=np.full_like(batch["x"], np.nan))
      yield batch

  monkeypatch.setattr(train_data, "train_batches", poisoned)
  with pytest.raises(FloatingPointError, match="non-finite loss or gradient at step 3.*"
                     "last good checkpoint: step 2 in "):
    train.train_and_evaluate(config, str(tmp_path))
  params, _, step = _params(str(tmp_path), config)
  assert step == 2
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(params))
  first = _npz_config(npz_spec, "train.checkpoint_every=5", "train.log_every=1",
                      "train.prefetch=0")                  # before the first checkpoint
  with pytest.raises(FloatingPointError, match="at step 3.*no checkpoint was saved yet"):
    train.train_and_evaluate(first, str(tmp_path / "first"))


def test_nonfinite_validation_predictions_stop_training_by_name(tmp_path, npz_spec,
                                                                  monkeypatch):
  # a NaN validation score compared as "no better": training used to early-stop
  # quietly and keep the latest checkpoint, with NaN metrics and no message
  config = _npz_config(npz_spec, "train.checkpoint_every=2", "train.eval_every=4",
                       "train.early_stopping_patience=1")
  original = train_data.to_label_units

  def one_nan(run, loc, scale, head):
    mu, sigma = original(run, loc, scale, head)
    if mu.size == len(run.idx["val"]):
      mu = mu.copy()
      mu[3] = np.nan
    return mu, sigma

  monkeypatch.setattr(train_data, "to_label_units", one_nan)
  row = int(train_data.prepare(config).idx["val"][3])
  with pytest.raises(FloatingPointError,
                     match=rf"non-finite validation predictions at step 4 for 1 of \d+ validation "
                     rf"records \(data rows \[{row}\]\).*last good checkpoint: step 2 in "):
    train.train_and_evaluate(config, str(tmp_path))


def test_a_fresh_start_removes_an_earlier_runs_predictions(tmp_path, npz_spec):
  # overwrite=True used to delete only the checkpoints: an interrupted retraining
  # left the old run's predictions beside the new config
  train.train_and_evaluate(_npz_config(npz_spec), str(tmp_path))
  assert (tmp_path / "predictions_val.npz").exists()
  again = train.train_and_evaluate(_npz_config(npz_spec, "train.lr=0.01"), str(tmp_path),
                                   overwrite=True, stop_after=2)
  assert again.steps == 2
  assert not (tmp_path / "predictions_val.npz").exists()
  assert not (tmp_path / "predictions_test.npz").exists()


@pytest.mark.parametrize("bad", [-1, 2.5, "2", True])
def test_a_bad_stop_after_is_refused_by_name(tmp_path, npz_spec, bad):
  with pytest.raises(ValueError, match="stop_after: expected None or an int >= 0"):
    train.train_and_evaluate(_npz_config(npz_spec), str(tmp_path), stop_after=bad)
  assert not os.listdir(tmp_path)


def test_model_that_does_not_fit_the_data_is_rejected(tmp_path, npz_spec):
  config = _npz_config(npz_spec, "model.widths=4,8,8,8,8,8", "model.blocks=1,1,1,1,1,1")
  with pytest.raises(ValueError, match="model.widths"):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")


def test_invalid_config_fails_before_training(tmp_path, npz_spec):
  with pytest.raises(ValueError, match="train.batch_size"):
    train.train_and_evaluate(_npz_config(npz_spec, "train.batch_size=12"), str(tmp_path))
  with pytest.raises(ValueError, match="loss.name"):
    train.train_and_evaluate(_npz_config(npz_spec, "loss.name=nope"), str(tmp_path))
  assert not os.listdir(tmp_path)


def test_predict_checks_its_input(tmp_path, npz_spec):
  train.train_and_evaluate(_npz_config(npz_spec), str(tmp_path / "run"))
  with pytest.raises(ValueError, match="x"):
    train.predict(str(tmp_path / "run"), np.zeros((3, TIME, 5), np.float32))
  with pytest.raises(ValueError, match="workdir"):
    train.predict(str(tmp_path / "nothing"), np.zeros((3, TIME, LEADS), np.float32))
  x = np.random.default_rng(0).normal(size=(5, TIME, LEADS)).astype(np.float32)
  np.save(tmp_path / "x.npy", x)
  mapped = np.load(tmp_path / "x.npy", mmap_mode="r")       # read in batches, as is
  np.testing.assert_array_equal(train.predict(str(tmp_path / "run"), mapped)[0],
                                train.predict(str(tmp_path / "run"), x)[0])
  view = data_lib.RowView(np.concatenate([x[:1], x]), np.arange(1, 6))   # a cleaned npz's x
  assert (view.size, view.nbytes) == (x.size, x.nbytes)   # AttributeError 'size' before
  np.testing.assert_array_equal(train.predict(str(tmp_path / "run"), view)[0],
                                train.predict(str(tmp_path / "run"), x)[0])
  x[3, 2, 1] = np.nan
  with pytest.raises(ValueError, match=r"x: .* 1 rows with NaN/inf .*\(first: row 3\)"):
    train.predict(str(tmp_path / "run"), x)
  big = np.asarray(x, np.float64)                          # finite in float64, inf in float32
  big[3, 2, 1], big[1, 0, 0] = 0.0, 1e39
  with pytest.raises(ValueError, match=r"x: .* 1 rows with NaN/inf or \|value\| > 3.4e\+?38 "
                                       r"\(first: row 1\)"):
    train.predict(str(tmp_path / "run"), big)


def test_pmap_run_matches_sharding_run(tmp_path, npz_spec):
  """The whole loop (data, weights, eval, checkpoints) under pmap equals sharding,
  with batches prefetched on a thread and without prefetching."""
  results = {}
  for name, mode, prefetch in (("sharding", "sharding", 2), ("pmap", "pmap", 2),
                               ("pmap_direct", "pmap", 0)):
    config = _npz_config(npz_spec, f"train.parallel={mode}", f"train.prefetch={prefetch}")
    result = train.train_and_evaluate(config, str(tmp_path / name))
    params, _, _ = _params(str(tmp_path / name), config)
    results[name] = (params, result)
  p_s, r_s = results["sharding"]
  for name in ("pmap", "pmap_direct"):
    p_p, r_p = results[name]
    for a, b in zip(jax.tree.leaves(p_p), jax.tree.leaves(p_s)):
      assert a.shape == b.shape
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(r_p.best_metrics["nll"], r_s.best_metrics["nll"], rtol=1e-4)


def test_bni_loss_spec_prior_is_the_training_label_histogram():
    cfg = apply_overrides(get_config("tiny"), ["loss.name=bni", "loss.bni_bins=7"])
    labels = np.random.default_rng(3).gamma(2.0, 1.0, size=500)
    spec = train.LossSpec.from_config(cfg, labels)
    counts, edges = np.histogram(labels, bins=7)           # independent numpy reference
    np.testing.assert_allclose(np.asarray(spec.bni_prior.centers), 0.5 * (edges[1:] + edges[:-1]),
                               rtol=1e-6)
    np.testing.assert_allclose(np.asarray(spec.bni_prior.probs), counts / counts.sum(), rtol=1e-6)
    with pytest.raises(ValueError, match="train_labels"):
        train.LossSpec.from_config(cfg, None)


def test_bni_runs_compile_once_per_process(tmp_path, npz_spec):
  # the BNI prior (arrays) made the spec unhashable: every call traced and compiled again
  config = _npz_config(npz_spec, "loss.name=bni")
  train.train_and_evaluate(config, str(tmp_path), stop_after=4)
  traces = dict(train.TRACE_COUNTS)
  train.train_and_evaluate(config, str(tmp_path))                 # resumes in this process
  assert train.TRACE_COUNTS["train_step"] == traces["train_step"]
  assert train.TRACE_COUNTS["eval_step"] == traces["eval_step"]


def test_compiled_steps_keep_specs_with_colliding_hashes_apart():
  """hash(1.0) == hash(2.0 ** 61) in Python: two Huber specs differing only there must
  get their own compiled step. Reference: the Huber loss of the step's own (mu, y), in numpy."""
  cfg = apply_overrides(get_config("tiny"), ["model.kind=mlp", "model.widths=8",
                                             "loss.name=huber", "train.parallel=none"])
  graphdef, state, schedule = train.create_train_state(cfg, (6,), 10)
  placement = parallel.Placement("none")
  specs = [train.LossSpec("huber", huber_delta=1.0), train.LossSpec("huber", huber_delta=2.0 ** 61)]
  assert hash(specs[0]) == hash(specs[1]) and specs[0] != specs[1]
  fns = [train.compiled_steps(placement, graphdef, s, schedule) for s in specs]
  assert fns[0][0] is not fns[1][0]
  rng = np.random.default_rng(0)
  batch = {"x": rng.normal(size=(4, 6)).astype(np.float32), "y": np.full(4, 10.0, np.float32),
           "w": np.ones(4, np.float32), "mask": np.ones(4, np.float32)}
  mu = np.asarray(fns[0][1](state, batch)["loc"], np.float64)
  err = np.abs(mu - 10.0)
  for spec, (step_fn, _) in zip(specs, fns):
    d = spec.huber_delta
    want = np.mean(np.where(err <= d, 0.5 * err ** 2, d * (err - 0.5 * d)))
    _, metrics = step_fn(jax.tree.map(jnp.copy, state), batch)
    assert float(metrics["loss"]) == pytest.approx(want, rel=1e-5)


def test_predict_reproduces_the_stored_predictions_bit_for_bit(tmp_path):
  # Chunked as they were made (train.eval_batch_size, here 8: 7 chunks of the test
  # split); one chunk of 256 changed the last float bits of a convolutional model.
  from hypuc_jax import data
  from hypuc_jax.config import apply_overrides
  config = apply_overrides(get_config("tiny"), ["train.parallel=none", "train.steps=4",
                                                "train.eval_batch_size=8"])
  result = train.train_and_evaluate(config, str(tmp_path))
  ds = data.load(config.data.spec)
  test = np.sort(data.split_indices(len(ds.y), config.data.seed, config.data.split)["test"])
  assert len(test) > 2 * 8
  pred = np.load(result.paths["predictions_test"])
  mu, sigma = train.predict(str(tmp_path), ds.x[test])
  np.testing.assert_array_equal(mu, pred["mu"])
  np.testing.assert_array_equal(sigma, pred["sigma"])


def test_a_run_data_prepared_for_another_config_is_refused(tmp_path):
  """train_and_evaluate takes the RunData train_data.prepare made (workflow passes the
  one its checks prepared); one made for another weighting or split trained the
  config.json's model on the other config's weights and split, without a word."""
  from hypuc_jax import workflow
  a = workflow.make_config("tiny", overrides=[
      "data.spec=simulated:potassium?n=200&duration=2&rate=50&seed=31337",
      "train.steps=2", "train.parallel=none"])
  run = train_data.prepare(a)
  for change in ("weighting.scheme=none", "data.seed=5"):
    b = apply_overrides(a, [change])
    with pytest.raises(ValueError, match="dataset: a RunData prepared for another config"):
      train.train_and_evaluate(b, str(tmp_path / "b"), dataset=run)
  assert not (tmp_path / "b").exists()
  import dataclasses
  lam_int = dataclasses.replace(apply_overrides(a, ["weighting.lam=1.0"]),
                                weighting=dataclasses.replace(a.weighting, lam=1))
  assert train_data.prepared_key(lam_int) == train_data.prepared_key(
      apply_overrides(a, ["weighting.lam=1.0"]))                  # values, not spellings
  assert train_data.prepared_key(apply_overrides(a, ["weighting.defer=0.5"])) == run.prepared_for
  assert train.train_and_evaluate(a, str(tmp_path / "a"), dataset=run).steps == 2
