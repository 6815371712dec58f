"""weighting.scope=head: the head re-fit against closed forms, scipy and scikit-learn,
and the training run that uses it (the plain network, the re-fitted head, predict,
resume, parallel modes, refusals)."""
import math
import os

import jax
import numpy as np
import pytest
from flax import nnx
from scipy import optimize

from hypuc_jax import checkpoints, head_refit, models, train, train_data
from hypuc_jax.config import apply_overrides, get_config, validate
from hypuc_jax.steps import LossSpec

N_FEAT = 5


def _problem(n=600, seed=0):
  """Features with offsets and unequal scales (the solver standardises them),
  labels with a feature-dependent noise, positive weights."""
  rng = np.random.default_rng(seed)
  f = (rng.normal(size=(n, N_FEAT)) * rng.uniform(0.2, 4.0, N_FEAT)
       + rng.uniform(-3, 3, N_FEAT)).astype(np.float32)
  z = (f - f.mean(0)) / f.std(0)
  y = (z @ rng.normal(size=N_FEAT) * 0.5
       + rng.normal(size=n) * (0.4 + 0.3 * (z[:, 0] > 0))).astype(np.float32)
  w = rng.uniform(0.2, 3.0, n).astype(np.float32)
  return f, y, w


def _head(kind):
  return models.MLP((N_FEAT,), head=kind, hidden=(), rngs=nnx.Rngs(3)).out


def _dense(params):
  d = nnx.to_pure_dict(params)["dense"]
  return np.asarray(d["kernel"], np.float64), np.asarray(d["bias"], np.float64)


def _ridge_reference(f, y, w, k0, l2):
  """argmin of mean_w (x k + b - y)^2 + 0.5 l2 ||diag(std)(k - k0)||^2, float64 normal equations."""
  f = np.asarray(f, np.float64)
  std = f.std(0)
  x = np.c_[f, np.ones(len(f))]
  wn = np.asarray(w, np.float64) / np.sum(w)
  a = 2 * (x * wn[:, None]).T @ x
  rhs = 2 * (x * wn[:, None]).T @ np.asarray(y, np.float64)
  pen = np.zeros(len(a))
  pen[:-1] = l2 * std ** 2
  a += np.diag(pen)
  rhs[:-1] += l2 * std ** 2 * k0
  sol = np.linalg.solve(a, rhs)
  return sol[:-1], sol[-1]


@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_a_squared_error_head_refit_is_weighted_ridge_regression(l2):
  f, y, w = _problem()
  head = _head("point")
  k0 = _dense(nnx.state(head, nnx.Param))[0][:, 0]
  params, info = head_refit.refit_head(head, f, y, w, LossSpec("mse"), l2=l2)
  k, b = _dense(params)
  k_ref, b_ref = _ridge_reference(f, y, w, k0, l2)
  np.testing.assert_allclose(k[:, 0], k_ref, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(b[0], b_ref, rtol=2e-4, atol=2e-5)
  mu = f.astype(np.float64) @ k_ref + b_ref
  assert info["loss"] == pytest.approx(np.sum(w * (mu - y) ** 2) / np.sum(w), rel=1e-5)
  assert info["loss"] < info["initial_loss"] and info["grad_norm"] < 1e-4


def _scipy_fit(f, y, w, kind):
  """The weighted objective of a Gaussian / Laplace / Huber head from f, minimised in
  float64 by scipy (the softplus link and sigma_min of models._Head written out)."""
  f, y, w = (np.asarray(a, np.float64) for a in (f, y, w))
  x = np.c_[(f - f.mean(0)) / f.std(0), np.ones(len(f))]
  outs = 1 if kind == "huber" else 2

  def loss(theta):
    out = x @ theta.reshape(-1, outs)
    err = y - out[:, 0]
    if kind == "huber":
      per = np.where(np.abs(err) <= 1.0, 0.5 * err ** 2, np.abs(err) - 0.5)
    else:
      s = np.logaddexp(0, out[:, 1]) + 1e-3
      per = (0.5 * np.log(2 * np.pi) + np.log(s) + 0.5 * (err / s) ** 2 if kind == "gaussian"
             else np.log(2 * s) + np.abs(err) / s)
    return np.sum(w * per) / np.sum(w)

  start = np.zeros((x.shape[1], outs))
  if kind == "laplace":        # non-smooth: Powell from the median regression's line
    from sklearn.linear_model import QuantileRegressor
    line = QuantileRegressor(quantile=0.5, alpha=0.0, solver="highs").fit(x[:, :-1], y,
                                                                         sample_weight=w)
    start[:-1, 0], start[-1, 0] = line.coef_, line.intercept_
    best = optimize.minimize(loss, start.ravel(), method="Powell",
                             options={"maxiter": 100000, "xtol": 1e-8, "ftol": 1e-12})
  else:
    best = optimize.minimize(loss, start.ravel(), method="BFGS", options={"gtol": 1e-10})
  return best.fun, x @ best.x.reshape(-1, outs)


@pytest.mark.parametrize("kind, loss, rel", [("gaussian", "nll", 1e-5),
                                             ("laplace", "laplace", 1e-3),
                                             ("point", "huber", 1e-5)])
def test_likelihood_head_refits_reach_scipys_optimum(kind, loss, rel):
  f, y, w = _problem(n=400)
  head = _head(kind)
  params, info = head_refit.refit_head(head, f, y, w, LossSpec(loss), max_iter=2000)
  ref_loss, ref_out = _scipy_fit(f, y, w, "huber" if loss == "huber" else kind)
  assert info["loss"] <= ref_loss + rel * abs(ref_loss)       # scipy's optimum, or better
  if kind != "laplace":          # smooth: a strict optimum that float64 BFGS finds
    assert info["loss"] >= ref_loss - 1e-5 * abs(ref_loss)
  graphdef, _, rest = nnx.split(head, nnx.Param, ...)
  fitted = nnx.merge(graphdef, params, rest)(f)
  err = np.asarray(fitted.loc, np.float64) - y                 # the returned head's loss
  if kind == "point":
    per = np.where(np.abs(err) <= 1.0, 0.5 * err ** 2, np.abs(err) - 0.5)
  elif kind == "laplace":
    b = np.asarray(fitted.scale, np.float64)
    per = np.log(2 * b) + np.abs(err) / b
  else:
    s = np.asarray(fitted.scale, np.float64)
    per = 0.5 * np.log(2 * np.pi) + np.log(s) + 0.5 * (err / s) ** 2
  assert np.sum(w * per) / np.sum(w) == pytest.approx(info["loss"], rel=1e-4)
  if kind == "gaussian":                  # a smooth strict optimum: the same (mu, sigma)
    np.testing.assert_allclose(fitted.loc, ref_out[:, 0], rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(fitted.scale, np.logaddexp(0, ref_out[:, 1]) + 1e-3,
                               rtol=2e-3, atol=2e-3)


def test_an_absolute_error_refit_comes_near_sklearns_median_regression():
  from sklearn.linear_model import QuantileRegressor
  f, y, w = _problem(n=400)
  params, info = head_refit.refit_head(_head("point"), f, y, w, LossSpec("l1"), max_iter=2000)
  k, b = _dense(params)
  assert np.sum(w * np.abs(f @ k[:, 0] + b[0] - y)) / np.sum(w) == pytest.approx(info["loss"],
                                                                                 rel=1e-4)
  ref = QuantileRegressor(quantile=0.5, alpha=0.0, solver="highs").fit(f, y, sample_weight=w)
  ref_loss = np.sum(w * np.abs(ref.predict(f) - y)) / np.sum(w)   # a linear programme's optimum
  assert ref_loss - 1e-6 <= info["loss"] <= ref_loss * 1.002


def test_select_refit_keeps_the_fit_with_the_lowest_validation_loss():
  f, y, w = _problem(n=900, seed=4)
  head = _head("point")
  k0 = _dense(nnx.state(head, nnx.Param))[0][:, 0]
  train_part = (f[:60], y[:60], w[:60])      # few records: the unpenalised fit overfits
  val = (f[60:], y[60:], w[60:])
  grid = (0.0, 0.1, 1.0, 10.0, math.inf)
  params, info = head_refit.select_refit(head, train_part, val, LossSpec("mse"), l2_grid=grid)
  scores = {}
  for l2 in grid:                           # numpy: the ridge path and its validation loss
    k, b = (k0, _dense(nnx.state(head, nnx.Param))[1][0]) if l2 == math.inf else \
        _ridge_reference(*train_part, k0, l2)
    scores[l2] = np.sum(val[2] * (val[0] @ k + b - val[1]) ** 2) / np.sum(val[2])
  best = min(grid, key=lambda l2: scores[l2])
  assert info["l2"] == best
  assert info["val_loss"] == pytest.approx({str(k): v for k, v in scores.items()}, rel=1e-4)
  chosen = _dense(params)[0][:, 0]
  expected = k0 if best == math.inf else _ridge_reference(*train_part, k0, best)[0]
  np.testing.assert_allclose(chosen, expected, rtol=1e-3, atol=1e-4)
  # l2 = inf alone: the trained head, unchanged
  same, _ = head_refit.select_refit(head, train_part, val, LossSpec("mse"), l2_grid=(math.inf,))
  np.testing.assert_array_equal(_dense(same)[0], _dense(nnx.state(head, nnx.Param))[0])


def test_the_given_head_is_left_as_it_was():
  f, y, w = _problem()
  head = _head("gaussian")
  before = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(head, nnx.Param)))
  head_refit.refit_head(head, f, y, w, LossSpec("nll"))
  after = nnx.to_pure_dict(nnx.state(head, nnx.Param))
  jax.tree.map(np.testing.assert_array_equal, before, after)


def test_bad_input_is_refused_by_name():
  f, y, w = _problem(n=50)
  head = _head("gaussian")
  spec = LossSpec("nll")
  bad = [((f, y, w, LossSpec("bmc")), {}, "spec: .*per-example loss"),
         ((f, y, -w, spec), {}, "w: expected weights >= 0"),
         ((f, y, 0 * w, spec), {}, "w: expected weights >= 0 with a positive sum"),
         ((f, y[:-1], w, spec), {}, "y, w: expected shape"),
         ((f[:, 0], y, w, spec), {}, "features: expected shape"),
         ((np.where(np.arange(50)[:, None] == 3, np.nan, f), y, w, spec), {}, "features"),
         ((f, y, w, spec), {"max_iter": 0}, "max_iter"),
         ((f, y, w, spec), {"tol": 0.0}, "tol"),
         ((f, y, w, spec), {"l2": -1.0}, "l2")]
  for args, kwargs, match in bad:
    with pytest.raises(ValueError, match=match):
      head_refit.refit_head(head, *args, **kwargs)
  with pytest.raises(ValueError, match="l2_grid"):
    head_refit.select_refit(head, (f, y, w), (f, y, w), spec, l2_grid=())
  with pytest.raises(ValueError, match="spec: .*beta 0"):
    head_refit.refit_head(head, f, y, w, LossSpec("nll", beta=0.5))
  with pytest.raises(ValueError, match=r"features: expected 5 columns .*got 4"):
    head_refit.refit_head(head, f[:, :4], y, w, spec)


def test_a_learnt_noise_scale_stays_and_the_dense_layer_converges():
  """BNI's value scales with stop_gradient(noise^2): a re-fitted noise ran off (MAE x7
  on a tiny run); the noise stays as trained and the layer converges."""
  from hypuc_jax import balanced_mse
  f, y, w = _problem()
  head = models.MLP((N_FEAT,), head="point", hidden=(), noise_sigma_init=0.7,
                    rngs=nnx.Rngs(3)).out
  prior = balanced_mse.histogram_prior(y, 20)
  spec = LossSpec("bni", bni_prior=balanced_mse.HistogramPrior(*map(np.asarray, prior)))
  params, info = head_refit.refit_head(head, f, y, w, spec)
  assert float(nnx.to_pure_dict(params)["log_noise_sigma"]) == pytest.approx(np.log(0.7))
  assert info["iterations"] < head_refit.MAX_ITER and info["grad_norm"] < 1e-4
  assert info["loss"] < info["initial_loss"]
  k, b = _dense(params)                       # the objective is BNI at the learnt noise 0.7
  per = balanced_mse.bni(f @ k[:, 0] + b[0], y, 0.7, *map(np.asarray, prior))
  assert np.sum(w * np.asarray(per)) / np.sum(w) == pytest.approx(info["loss"], rel=1e-4)
  at_spec_noise = balanced_mse.bni(f @ k[:, 0] + b[0], y, 1.0, *map(np.asarray, prior))
  assert np.sum(w * np.asarray(at_spec_noise)) / np.sum(w) != pytest.approx(info["loss"],
                                                                             rel=1e-2)


def test_float64_labels_and_weights_under_x64_are_fitted_in_float32():
  f, y, w = _problem()
  head = _head("gaussian")
  want, _ = head_refit.refit_head(head, f, y, w, LossSpec("nll"))
  with jax.enable_x64(True):
    got, info = head_refit.refit_head(head, f.astype(np.float64), y.astype(np.float64),
                                      w.astype(np.float64), LossSpec("nll"))
  assert info["grad_norm"] < 1e-4
  np.testing.assert_allclose(_dense(got)[0], _dense(want)[0], rtol=1e-5, atol=1e-6)


def test_a_bfloat16_head_is_refitted_in_float32():
  """A bf16 dense layer stalled at its rounding (500 iterations, erratic ridge path):
  the solve computes in float32, so it reaches the float32 head's optimum."""
  f, y, w = _problem()
  heads = {dt: models.MLP((N_FEAT,), head="gaussian", hidden=(), dtype=dt,
                          rngs=nnx.Rngs(3)).out for dt in ("float32", "bfloat16")}
  fits = {dt: head_refit.refit_head(h, f, y, w, LossSpec("nll")) for dt, h in heads.items()}
  assert fits["bfloat16"][1]["iterations"] < head_refit.MAX_ITER
  np.testing.assert_allclose(_dense(fits["bfloat16"][0])[0], _dense(fits["float32"][0])[0],
                             rtol=1e-4, atol=1e-5)
  assert heads["bfloat16"].dense.dtype == np.dtype("bfloat16")     # the model's own head kept


# ----------------------------------------------------------------------------
# The training run.

TIME, LEADS, N = 64, 4, 240


@pytest.fixture(scope="module")
def npz_spec(tmp_path_factory):
  """Signals whose label is read from lead 0, with a skewed label distribution."""
  rng = np.random.default_rng(7)
  x = rng.normal(size=(N, TIME, LEADS)).astype(np.float32)
  y = (4.2 + 0.6 * x[:, :16, 0].mean(axis=1) * 4 + rng.gamma(1.5, 0.3, N)).astype(np.float32)
  path = tmp_path_factory.mktemp("data") / "signals.npz"
  np.savez(path, x=x, y=y)
  return f"npz:{path}"


def _config(spec, *extra):
  return apply_overrides(get_config("tiny"), [
      f"data.spec={spec}", "train.steps=8", "train.batch_size=16", "train.eval_batch_size=32",
      "train.checkpoint_every=4", "train.eval_every=4", "train.parallel=none",
      "weighting.lam=1.0", *extra])


def _restore(workdir, config, step):
  graphdef, template, _ = train.create_train_state(config, (TIME, LEADS), 1)
  store = checkpoints.CheckpointStore(os.path.join(workdir, "checkpoints"), keep=3,
                                      fingerprint=train.fingerprint(config), read_only=True)
  state, _ = store.restore(step, template)
  store.close()
  return nnx.merge(graphdef, state)[0]


def test_a_head_scope_run_is_the_plain_network_with_a_weighted_ridge_head(tmp_path, npz_spec,
                                                                          monkeypatch):
  """The network, its checkpoints and their selection are the unweighted run's; the
  stored head is the closed-form weighted ridge fit on its features (squared error),
  at the validation-chosen strength; predictions and predict() use that head."""
  # finite strengths only: this short run's validation could keep the trained head
  monkeypatch.setattr(head_refit, "L2_GRID", (0.05, 0.5))
  plain = _config(npz_spec, "loss.name=mse", "weighting.scheme=none")
  head = _config(npz_spec, "loss.name=mse", "weighting.scope=head")
  r_plain = train.train_and_evaluate(plain, str(tmp_path / "plain"))
  r_head = train.train_and_evaluate(head, str(tmp_path / "head"))
  assert r_head.best_step == r_plain.best_step
  m_plain = _restore(str(tmp_path / "plain"), plain, r_plain.best_step)
  m_head = _restore(str(tmp_path / "head"), head, r_head.best_step)   # the stored network
  for a, b in zip(jax.tree.leaves(nnx.state(m_plain, nnx.Param)),
                  jax.tree.leaves(nnx.state(m_head, nnx.Param))):
    np.testing.assert_array_equal(a, b)
  step, stored, stored_info = checkpoints.load_head(str(tmp_path / "head" / "checkpoints"))
  assert step == r_head.best_step
  assert stored_info == r_head.best_metrics["head_refit"]
  run = train_data.prepare(head)
  m_plain.eval()
  feats = {s: np.asarray(m_plain.features(run.scaler.transform_x(run.x[run.idx[s]])),
                         np.float64) for s in ("train", "val")}
  y_tr = run.y[run.idx["train"]]
  w_tr = np.asarray(run.weighting(np.asarray(y_tr, np.float32)), np.float64)
  info = r_head.best_metrics["head_refit"]
  k0 = np.asarray(m_plain.out.dense.kernel[...], np.float64)[:, 0]
  k_ref, b_ref = _ridge_reference(feats["train"], run.y_scaled("train"), w_tr, k0, info["l2"])
  assert set(info["val_loss"]) == {"0.05", "0.5"}
  assert info["l2"] == min((0.05, 0.5), key=lambda v: info["val_loss"][str(v)])
  np.testing.assert_allclose(stored["dense"]["kernel"][:, 0], k_ref, rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(stored["dense"]["bias"][0], b_ref, rtol=1e-3, atol=1e-4)
  assert w_tr.std() > 0.1 and np.abs(k_ref - k0).max() > 1e-3     # the weights did something
  mu_ref = run.scaler.inverse_y(feats["val"] @ stored["dense"]["kernel"][:, 0]
                                + stored["dense"]["bias"][0])
  pred = np.load(tmp_path / "head" / "predictions_val.npz")
  np.testing.assert_allclose(pred["mu"], mu_ref, rtol=1e-5, atol=1e-5)
  assert r_head.best_metrics["mae"] == pytest.approx(np.mean(np.abs(mu_ref - pred["y"])),
                                                     rel=1e-5)
  mu, _ = train.predict(str(tmp_path / "head"), run.x[run.idx["val"]])
  np.testing.assert_array_equal(mu, pred["mu"])
  path = tmp_path / "head" / "checkpoints" / checkpoints.HEAD_FILE
  good = path.read_bytes()
  damaged = {"no bias": {"dense": {"kernel": stored["dense"]["kernel"]}},
             "NaN kernel": {"dense": {**stored["dense"],
                                      "kernel": np.full_like(stored["dense"]["kernel"], np.nan)}},
             "wrong shape": {"dense": {**stored["dense"], "kernel": stored["dense"]["kernel"][:2]}},
             "extra key": {**stored, "extra": np.zeros(1)}}
  for what, params in damaged.items():
    checkpoints.save_head(str(path.parent), step, params)
    with pytest.raises(ValueError, match=f"{checkpoints.HEAD_FILE}: not a re-fitted head"):
      train.predict(str(tmp_path / "head"), run.x[run.idx["val"]])
  checkpoints.save_head(str(path.parent), step + 1, stored)    # fitted to another checkpoint
  with pytest.raises(ValueError, match=f"fitted to step {step + 1}, not {step}"):
    train.predict(str(tmp_path / "head"), run.x[run.idx["val"]])
  path.write_bytes(good)
  os.remove(path)
  with pytest.raises(ValueError, match="re-fitted head of weighting.scope=head .* missing"):
    train.predict(str(tmp_path / "head"), run.x[run.idx["val"]])


def test_the_stored_fit_facts_are_strict_json(tmp_path):
  import json
  import zipfile
  info = {"l2": math.inf, "grad_norm": None, "val_loss": {"0.0": math.inf, "1.0": 0.5}}
  checkpoints.save_head(str(tmp_path), 3, {"dense": {"bias": np.zeros(2)}}, info)
  with zipfile.ZipFile(tmp_path / checkpoints.HEAD_FILE) as z:
    text = str(np.load(z.open("__info__.npy")))
  def refuse(name):
    raise ValueError(name)
  loaded = json.loads(text, parse_constant=refuse)        # no Infinity / NaN tokens
  assert loaded == {"l2": None, "grad_norm": None, "val_loss": {"0.0": None, "1.0": 0.5}}
  assert checkpoints.load_head(str(tmp_path))[2] == loaded


def test_a_stopped_head_scope_run_resumes_to_the_same_head(tmp_path, npz_spec):
  config = _config(npz_spec, "weighting.scope=head")
  whole = train.train_and_evaluate(config, str(tmp_path / "whole"))
  train.train_and_evaluate(config, str(tmp_path / "part"), stop_after=5)
  assert checkpoints.load_head(str(tmp_path / "part" / "checkpoints")) is None
  resumed = train.train_and_evaluate(config, str(tmp_path / "part"))
  assert resumed.best_metrics == whole.best_metrics
  a = checkpoints.load_head(str(tmp_path / "whole" / "checkpoints"))
  b = checkpoints.load_head(str(tmp_path / "part" / "checkpoints"))
  assert a[0] == b[0]
  jax.tree.map(np.testing.assert_array_equal, a[1], b[1])
  again = train.train_and_evaluate(config, str(tmp_path / "part"))   # a finished run: re-fit
  assert again.best_metrics == whole.best_metrics                  # gives the same head


def test_the_head_scope_gives_the_same_model_on_8_devices(tmp_path, npz_spec, n_devices):
  results = {}
  for mode in ("none", "sharding", "pmap"):
    config = _config(npz_spec, "weighting.scope=head", f"train.parallel={mode}")
    results[mode] = train.train_and_evaluate(config, str(tmp_path / mode))
  ref = np.load(tmp_path / "none" / "predictions_test.npz")
  for mode in ("sharding", "pmap"):
    got = np.load(tmp_path / mode / "predictions_test.npz")
    np.testing.assert_allclose(got["mu"], ref["mu"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got["sigma"], ref["sigma"], rtol=1e-4, atol=1e-4)
    assert results[mode].best_metrics["head_refit"]["l2"] == \
        results["none"].best_metrics["head_refit"]["l2"]


@pytest.mark.parametrize("change, key", [("weighting.apply=resample", "weighting.apply"),
                                         ("weighting.defer=0.5", "weighting.defer"),
                                         ("loss.name=bmc", "loss.name"),
                                         ("loss.beta=0.5", "loss.beta"),
                                         ("train.select_on=weighted_nll", "train.select_on"),
                                         ("weighting.scope=all", "weighting.scope")])
def test_head_scope_conflicts_are_refused_by_name(change, key):
  config = apply_overrides(get_config("tiny"), ["weighting.scope=head"]) \
      if key != "weighting.scope" else get_config("tiny")
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    validate(apply_overrides(config, [change]), 1)
  # without a weighting the scope has no effect, and nothing to refuse
  plain = apply_overrides(get_config("tiny"), ["weighting.scheme=none", "weighting.scope=head"])
  for other in ("weighting.apply=resample", "weighting.defer=0.5", "loss.name=bmc",
                "loss.beta=0.5", "train.select_on=weighted_nll"):
    validate(apply_overrides(plain, [other]), 1)
  assert not train.refits_head(plain)


def test_the_softplus_reference_link_is_the_models():
  """The scipy reference above writes the head's link out; check it is the model's."""
  head = _head("gaussian")
  out = head(np.ones((2, N_FEAT), np.float32))
  raw = np.ones((2, N_FEAT)) @ np.asarray(head.dense.kernel[...]) + np.asarray(head.dense.bias[...])
  np.testing.assert_allclose(out.scale, np.logaddexp(0, raw[:, 1]) + 1e-3, rtol=1e-6)


def test_the_command_line_trains_evaluates_and_predicts_with_a_refitted_head(tmp_path, capsys):
  import csv
  import json
  import sys
  sys.path.insert(0, os.path.dirname(__file__))
  from cli_helpers import FAST, TINY, hypuc
  from hypuc_jax import data as data_lib
  wd = tmp_path / "run"
  for argv in (["train", "--workdir", wd, "--data", TINY, "--preset", "tiny", "--parallel",
                "none", "--weighting", "hypuc", "--set", "weighting.scope=head", *FAST],
               ["calibrate", "--workdir", wd], ["correct", "--workdir", wd],
               ["evaluate", "--workdir", wd],
               ["predict", "--workdir", wd, "--data", TINY, "--output", tmp_path / "p.csv"]):
    rc, out, err = hypuc(capsys, *argv)
    assert rc == 0, (argv, err)
    if argv[0] == "train":
      assert "weighting=hypuc, scope=head" in out
  assert checkpoints.load_head(str(wd / "checkpoints")) is not None
  assert json.loads((wd / "eval.json").read_text())["n"] > 0
  ds = data_lib.load(TINY, labels_optional=True)
  want, _ = train.predict(str(wd), ds.x)                # with the stored head
  with open(tmp_path / "p.csv") as f:
    got = [float(r["mu"]) for r in csv.DictReader(f)]
  np.testing.assert_array_equal(got, np.asarray(want, np.float64))
