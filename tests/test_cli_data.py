"""The ``hypuc`` command line on tabular (CSV) data: predict on new data, and
what bad input or a failed re-run must leave untouched.

References are computed here: CSV columns parsed with the ``csv`` module and
numpy, the model applied through ``train.predict`` on arrays built by hand.
"""
import csv
import json
import shutil

import numpy as np
import pytest

from cli_helpers import hypuc, one_line_error
from csv_files import write_csv as _write_csv
from hypuc_jax import cli, train, workflow

FEATURES = ("a", "b", "c")
FAST = ["--preset", "tiny", "--set", "model.kind=mlp", "--set", "model.widths=8,8",
        "--set", "train.steps=20", "--set", "corrections.n_estimators=10",
        "--set", "train.parallel=none"]


def _table(n, seed):
  """Features a, b, c and target = 2a - b + noise; a split column (fixed split)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 3))
  y = 4.0 + 2.0 * x[:, 0] - x[:, 1] + 0.1 * rng.normal(size=n)
  split = np.array(["train", "val", "test"])[np.arange(n) % 5 // 2]  # 2:2:1
  return x, y, split


def _files(wd):
  return {p.relative_to(wd): p.read_bytes() for p in sorted(wd.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tabular(tmp_path_factory):
  """A finished CSV run (train, calibrate, correct, evaluate) on a fixed split column."""
  root = tmp_path_factory.mktemp("tab")
  x, y, split = _table(400, 0)
  data = root / "d.csv"
  _write_csv(data, [*FEATURES, "target", "part"],
             [[*r.tolist(), float(t), s] for r, t, s in zip(x, y, split)])
  wd = root / "run"
  rc = cli.main(["train", "--workdir", str(wd), "--data", f"csv:{data}?split=part",
                 "--target", "target", *FAST])
  assert rc == 0
  for cmd in ("calibrate", "correct", "evaluate"):
    assert cli.main([cmd, "--workdir", str(wd)]) == 0
  return root, data, wd, (x, y, split)


def _read(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_training_labels_follow_the_fixed_split_column(tabular):
  _, _, wd, (_, y, split) = tabular
  np.testing.assert_allclose(np.load(wd / workflow.TRAIN_LABELS),
                             y[split == "train"].astype(np.float32), rtol=1e-6)
  task = json.loads((wd / workflow.TASK).read_text())
  assert task["feature_names"] == list(FEATURES)


def test_predict_new_unlabeled_data_by_column_name(tabular, capsys):
  root, _, wd, _ = tabular
  x, y, _ = _table(30, 1)
  want, _ = train.predict(str(wd), x.astype(np.float32))       # features in training order
  labelled, unlabelled, shuffled = root / "l.csv", root / "u.csv", root / "s.csv"
  _write_csv(labelled, [*FEATURES, "target"], [[*r.tolist(), float(t)] for r, t in zip(x, y)])
  _write_csv(unlabelled, FEATURES, x.tolist())
  order = [2, 0, 1]                                             # columns c, a, b + an extra
  _write_csv(shuffled, [FEATURES[i] for i in order] + ["note"],
             [[*r[order].tolist(), "x"] for r in x])
  outs = {}
  for name, path in (("labelled", labelled), ("unlabelled", unlabelled),
                     ("shuffled", shuffled)):
    out = root / f"p_{name}.csv"
    rc, _, err = hypuc(capsys, "predict", "--workdir", wd, "--data", f"csv:{path}",
                        "--output", out)                        # no target=: the run's
    assert rc == 0, err
    outs[name] = _read(out)
    assert len(outs[name]) == 30
    np.testing.assert_allclose([float(r["mu"]) for r in outs[name]], want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose([float(r["y"]) for r in outs["labelled"]], y, rtol=1e-5)
  assert "y" not in outs["unlabelled"][0] and "y" not in outs["shuffled"][0]
  # some labels missing: the y column keeps its rows, empty where unknown
  partial = root / "partial.csv"
  _write_csv(partial, [*FEATURES, "target"],
             [[*r.tolist(), "" if i % 3 == 0 else float(t)] for i, (r, t) in enumerate(zip(x, y))])
  out = root / "p_partial.csv"
  assert hypuc(capsys, "predict", "--workdir", wd, "--data", f"csv:{partial}",
                "--output", out)[0] == 0
  got = [r["y"] for r in _read(out)]
  assert [v == "" for v in got] == [i % 3 == 0 for i in range(30)]
  # the same with target= named in the spec: per-row gaps are fine ...
  out = root / "p_partial_named.csv"
  assert hypuc(capsys, "predict", "--workdir", wd, "--data", f"csv:{partial}?target=target",
                "--output", out)[0] == 0
  assert [r["y"] == "" for r in _read(out)] == [i % 3 == 0 for i in range(30)]
  # ... but a column the spec names must exist (it was silently read as "no labels")
  rc, _, err = hypuc(capsys, "predict", "--workdir", wd, "--data", f"csv:{labelled}?target=zz",
                     "--output", root / "p_zz.csv")
  assert "'zz' not found" in one_line_error(rc, err)
  assert not (root / "p_zz.csv").exists()


def test_predict_flags_records_far_outside_the_training_features(tabular, capsys, caplog):
  """Features x1e30 gave mu -1e30 at the smallest sigma of the file, unflagged.
  Rows with a feature beyond the training range by more than its width get
  out_of_range = 1 and flag = 1 (reference: the training rows' min / max in
  numpy); rows inside keep their entropy flag and out_of_range = 0."""
  root, _, wd, (x0, _, split) = tabular
  lo, hi = x0[split == "train"].min(axis=0), x0[split == "train"].max(axis=0)
  task = json.loads((wd / workflow.TASK).read_text())
  np.testing.assert_allclose(task["feature_range"], [lo, hi], rtol=1e-6)
  x, _, _ = _table(20, 2)
  x[3, 0] = 1e30
  x[7, 2] = hi[2] + 1.01 * (hi[2] - lo[2])                    # just beyond one width
  x[9, 1] = hi[1] + 0.99 * (hi[1] - lo[1])                    # just inside
  path, out = root / "far.csv", root / "p_far.csv"
  _write_csv(path, FEATURES, x.tolist())
  with caplog.at_level("WARNING"):
    rc, _, err = hypuc(capsys, "predict", "--workdir", wd, "--data", f"csv:{path}",
                       "--output", out)
  assert rc == 0, err
  assert "2 of 20 records have features beyond the training range" in caplog.text
  rows = _read(out)
  far = [int(r["out_of_range"]) for r in rows]
  assert far == [int(i in (3, 7)) for i in range(20)]
  assert all(int(r["flag"]) == 1 for i, r in enumerate(rows) if far[i])


def test_predict_writes_labels_as_given(tabular, capsys):
  """Labels are read as float32; 4.1 used to come out as 4.099999904632568. Each
  y cell is now the shortest decimal of its float32 value: the typed label back
  for labels of <= 7 significant digits, and any label round-trips in float32."""
  root, _, wd, _ = tabular
  x, y, _ = _table(6, 3)
  labels = [4.1, 5.35, 0.00012, 1234567.0, 6.5, float(y[0])]
  path, out = root / "labels.csv", root / "p_labels.csv"
  _write_csv(path, [*FEATURES, "target"], [[*r.tolist(), t] for r, t in zip(x, labels)])
  assert hypuc(capsys, "predict", "--workdir", wd, "--data", f"csv:{path}",
               "--output", out)[0] == 0
  cells = [r["y"] for r in _read(out)]
  assert cells[:5] == ["4.1", "5.35", "0.00012", "1234567.0", "6.5"]
  assert np.float32(float(cells[5])) == np.float32(labels[5])


def test_out_of_range_in_blocks_equals_the_whole_array_check():
  """out_of_range reads a memory map a block at a time; on 70000 rows (two
  blocks) it equals the one-shot numpy comparison written here."""
  from hypuc_jax.inference import out_of_range
  rng = np.random.default_rng(0)
  x = rng.normal(size=(70000, 3)).astype(np.float32)
  x[[5, 65540, 69999], [0, 1, 2]] = [9.0, -9.0, 1e30]
  lo, hi = np.array([-2.0, -2.0, 3.0]), np.array([2.0, 2.0, 3.0])
  margin = np.array([4.0, 4.0, 3.0])                    # width; a constant 3: max(|3|, 1)
  want = np.any((x < lo - margin) | (x > hi + margin), axis=1)
  got = out_of_range(x, (tuple(lo), tuple(hi)))
  np.testing.assert_array_equal(got, want)
  assert got[[5, 65540, 69999]].all()
  assert not out_of_range(x, ()).any()


def test_predict_refuses_rows_it_cannot_score(tabular, capsys):
  root, _, wd, _ = tabular
  x, _, _ = _table(10, 2)
  bad = root / "nan.csv"
  rows = x.tolist()
  rows[4][1] = "nan"
  _write_csv(bad, FEATURES, rows)
  out = root / "p_nan.csv"
  rc, _, err = hypuc(capsys, "predict", "--workdir", wd, "--data", f"csv:{bad}",
                      "--output", out)
  assert "row 4" in one_line_error(rc, err) and not out.exists()
  missing = root / "missing.csv"
  _write_csv(missing, ["a", "c"], x[:, [0, 2]].tolist())
  rc, _, err = hypuc(capsys, "predict", "--workdir", wd, "--data", f"csv:{missing}",
                      "--output", out)
  assert "['b']" in one_line_error(rc, err) and not out.exists()
  complete = root / "complete.csv"
  _write_csv(complete, FEATURES, x.tolist())
  rc, _, err = hypuc(capsys, "predict", "--workdir", wd, "--data",
                      f"csv:{complete}?features=b,a,c", "--output", out)
  assert "feature columns ['a', 'b', 'c']" in one_line_error(rc, err) and not out.exists()


def test_predict_output_must_be_a_csv_path(tabular, capsys, tmp_path):
  root, data, wd, _ = tabular
  before = _files(wd)
  for output in (wd / "config.json", wd / "task.json", tmp_path):
    rc, _, err = hypuc(capsys, "predict", "--workdir", wd, "--data", f"csv:{data}",
                        "--output", output)
    assert "--output" in one_line_error(rc, err)
  (tmp_path / "dir.csv").mkdir()
  rc, _, err = hypuc(capsys, "predict", "--workdir", wd, "--data", f"csv:{data}",
                      "--output", tmp_path / "dir.csv")
  assert "--output" in one_line_error(rc, err)
  (tmp_path / "afile").write_text("")           # an OSError "[Errno 17] File exists" before
  rc, _, err = hypuc(capsys, "predict", "--workdir", wd, "--data", f"csv:{data}",
                     "--output", tmp_path / "afile" / "sub" / "p.csv")
  assert "--output" in one_line_error(rc, err) and "is a file" in err
  rc, _, err = hypuc(capsys, "train", "--workdir", tmp_path / "afile", "--data",
                     f"csv:{data}?split=part", "--target", "target", *FAST)
  assert "--workdir" in one_line_error(rc, err) and "is a file" in err
  # A folder nothing can be created in (/proc; root ignores permissions): the error
  # names --output and the path, not the temporary file.
  rc, _, err = hypuc(capsys, "predict", "--workdir", wd, "--data", f"csv:{data}",
                     "--output", "/proc/p.csv")
  assert one_line_error(rc, err).endswith("error: --output: cannot write /proc/p.csv "
                                          "(No such file or directory)")
  assert _files(wd) == before


def test_predict_refuses_to_overwrite_its_input(tabular, capsys, tmp_path, monkeypatch):
  """--output naming the --data file (directly, by another spelling, or a wfdb
  label table) is refused and the input is left as it was; a link at the
  input is replaced, not followed, so it is allowed."""
  root, _, wd, _ = tabular
  x, _, _ = _table(12, 3)
  data = tmp_path / "in.csv"
  _write_csv(data, FEATURES, x.tolist())
  before = data.read_bytes()
  monkeypatch.chdir(tmp_path)
  for spec, output in ((f"csv:{data}", data), ("csv:in.csv", "./in.csv"),
                       (f"csv:{data}", tmp_path / "." / "in.csv"),
                       (f"wfdb:{tmp_path}?labels={data}", data),
                       (f"wfdb:{tmp_path}", tmp_path / "labels.csv")):
    if spec.startswith("wfdb") and not (tmp_path / "labels.csv").exists():
      (tmp_path / "labels.csv").write_bytes(before)
    rc, _, err = hypuc(capsys, "predict", "--workdir", wd, "--data", spec, "--output", output)
    assert "is the --data input" in one_line_error(rc, err), spec
  assert data.read_bytes() == before == (tmp_path / "labels.csv").read_bytes()
  (tmp_path / "link.csv").symlink_to(data)
  assert hypuc(capsys, "predict", "--workdir", wd, "--data", f"csv:{data}",
               "--output", tmp_path / "link.csv")[0] == 0
  assert data.read_bytes() == before and not (tmp_path / "link.csv").is_symlink()


def test_failed_train_keeps_the_finished_run(tabular, capsys, tmp_path):
  """Unreadable data, an empty split or a model that does not take the records:
  refused before anything in the run directory changes, --overwrite or not."""
  root, data, wd0, (x, y, split) = tabular
  wd = tmp_path / "run"
  shutil.copytree(wd0, wd)
  before = _files(wd)
  argv = ["train", "--workdir", wd, "--data", f"csv:{data}?split=part", "--target", "target",
          *FAST]
  no_val = tmp_path / "no_val.csv"
  _write_csv(no_val, [*FEATURES, "target", "part"],
             [[*r.tolist(), float(t), "test" if s == "val" else s] for r, t, s in zip(x, y, split)])
  for bad, needle in (([*argv[:4], f"csv:{no_val}?split=part", *argv[5:]], "'val' empty"),
                      ([*argv, "--set", "model.kind=resnet1d"], "model")):
    rc, _, err = hypuc(capsys, *bad, "--overwrite")
    assert needle in one_line_error(rc, err)
    assert _files(wd) == before
  moved = tmp_path / "elsewhere.csv"
  shutil.move(data, moved)                                 # the same config, its data gone
  try:
    rc, _, err = hypuc(capsys, *argv)
  finally:
    shutil.move(moved, data)
  assert data.name in one_line_error(rc, err)
  assert _files(wd) == before
  rc, _, err = hypuc(capsys, *argv[:4], f"csv:{tmp_path / 'gone.csv'}?split=part", *argv[5:],
                      "--overwrite")
  assert "gone.csv" in one_line_error(rc, err)
  assert _files(wd) == before


def test_retrain_on_changed_data_is_refused_unless_overwrite(tabular, capsys, tmp_path):
  """The identical config on data edited in place: the checkpoints were trained
  on the old data, so a plain re-run is refused with nothing changed (it used
  to resume at the last step, i.e. keep the old model and re-predict);
  --overwrite trains from scratch on the new data and drops the later stages."""
  _, data0, _, (x, y, split) = tabular
  data = tmp_path / "d.csv"
  shutil.copy(data0, data)
  wd = tmp_path / "run"
  argv = ["train", "--workdir", wd, "--data", f"csv:{data}?split=part", "--target", "target",
          *FAST]
  assert hypuc(capsys, *argv)[0] == 0
  for cmd in ("calibrate", "correct", "evaluate"):
    assert hypuc(capsys, cmd, "--workdir", wd)[0] == 0
  old_mu = np.load(wd / "predictions_val.npz")["mu"]
  _write_csv(data, [*FEATURES, "target", "part"],
             [[*r.tolist(), 8.0 - float(t), s] for r, t, s in zip(x, y, split)])
  before = _files(wd)
  rc, _, err = hypuc(capsys, *argv)
  assert "trained on other data" in one_line_error(rc, err)
  assert _files(wd) == before
  rc, _, err = hypuc(capsys, *argv, "--overwrite")
  assert rc == 0, err
  np.testing.assert_allclose(np.load(wd / workflow.TRAIN_LABELS),
                             8.0 - y[split == "train"].astype(np.float32), atol=1e-6)
  val = np.load(wd / "predictions_val.npz")
  np.testing.assert_allclose(val["y"], 8.0 - y[split == "val"], atol=1e-6)
  # retrained (the old model on the same records would give old_mu exactly): the new
  # model follows the flipped labels, the old one anti-correlates with them
  assert not np.allclose(val["mu"], old_mu)
  assert np.corrcoef(val["y"], val["mu"])[0, 1] > 0 > np.corrcoef(val["y"], old_mu)[0, 1]
  for stale in (workflow.CALIBRATION, workflow.CORRECTIONS, workflow.EVAL):
    assert not (wd / stale).exists()
  for cmd in ("calibrate", "correct", "evaluate"):
    assert hypuc(capsys, cmd, "--workdir", wd)[0] == 0
  rc, _, err = hypuc(capsys, *argv)            # the same config and data now: resumes,
  assert rc == 0, err                          # re-predicts and drops the later stages
  for stale in (workflow.CALIBRATION, workflow.CORRECTIONS, workflow.EVAL):
    assert not (wd / stale).exists()
  assert (wd / workflow.TASK).exists() and (wd / "predictions_val.npz").exists()


def test_predict_writes_nothing_into_the_run_and_takes_npz_by_position(tabular, capsys,
                                                                        tmp_path):
  """An older run directory (fingerprint without loss.beta) stays byte-identical;
  an npz's columns (x0, x1, ...) are taken in the training order."""
  _, _, wd0, _ = tabular
  wd = tmp_path / "run"
  shutil.copytree(wd0, wd)
  fp = wd / "checkpoints" / "fingerprint.json"
  stored = json.loads(fp.read_text())
  del stored["loss"]["beta"]
  fp.write_text(json.dumps(stored))
  wd.chmod(0o555)                                           # a read-only run directory
  try:
    before = _files(wd)
    x, _, _ = _table(12, 3)
    np.savez(tmp_path / "new.npz", x=x.astype(np.float32))
    want, _ = train.predict(str(wd), x.astype(np.float32))
    out = tmp_path / "p.csv"
    rc, _, err = hypuc(capsys, "predict", "--workdir", wd, "--data",
                        f"npz:{tmp_path / 'new.npz'}", "--output", out)
    assert rc == 0, err
    np.testing.assert_allclose([float(r["mu"]) for r in _read(out)], want, rtol=1e-5,
                               atol=1e-6)
    assert _files(wd) == before
  finally:
    wd.chmod(0o755)


def test_same_data_named_another_way_is_refused_with_a_hint(tabular, capsys, monkeypatch):
  """The spec is compared as written: the error says how to resume."""
  root, data, wd, _ = tabular
  monkeypatch.chdir(root)
  before = _files(wd)
  rc, _, err = hypuc(capsys, "train", "--workdir", wd, "--data", "csv:./d.csv?split=part",
                     "--target", "target", *FAST)
  line = one_line_error(rc, err)
  assert f"data.spec: stored 'csv:{data}?split=part', now 'csv:./d.csv?split=part'" in line
  assert "give --data as stored to resume" in line, line
  assert _files(wd) == before


def test_target_flag_conflicts_are_refused(tabular, capsys, tmp_path):
  _, data, _, _ = tabular
  for spec, target, needle in ((f"csv:{data}?target=target", "a", "conflicts"),
                               ("simulated:potassium?n=64", "K", "csv and wfdb")):
    wd = tmp_path / needle.replace(" ", "_")
    rc, _, err = hypuc(capsys, "train", "--workdir", wd, "--data", spec, "--target", target,
                        *FAST)
    line = one_line_error(rc, err)
    assert "data.target" in line and needle in line
    assert not wd.exists()


def test_train_names_a_damaged_config_in_the_workdir(tabular, capsys, tmp_path):
  _, data, wd0, _ = tabular
  wd = tmp_path / "run"
  shutil.copytree(wd0, wd)
  d = json.loads((wd / "config.json").read_text())
  d["train"]["foo"] = 1
  (wd / "config.json").write_text(json.dumps(d))
  rc, _, err = hypuc(capsys, "train", "--workdir", wd, "--data", f"csv:{data}?split=part",
                     "--target", "target", *FAST)
  line = one_line_error(rc, err)       # it read like a bad --set ("train.foo: unknown key")
  assert "config.json: not a valid run config" in line and "train.foo" in line


def test_damaged_run_files_are_named(tabular, capsys, tmp_path):
  _, data, wd0, _ = tabular
  def rewrite_npz(path, **change):
    with np.load(path) as z:
      arrays = {k: z[k] for k in z.files}
    arrays.update(change)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})

  def corrupt_etas(path):
    d = json.loads(path.read_text())
    d["etas"] = d["etas"][:-1] + [-1.0]
    path.write_text(json.dumps(d))

  def nan_sigma(path):
    with np.load(path) as z:
      sigma = z["sigma"].copy()
    sigma[3] = np.nan
    rewrite_npz(path, sigma=sigma)

  cases = {"task.json": lambda p: p.write_text("{}"),
           "corrections/models.joblib": lambda p: p.write_bytes(b"garbage"),
           "labels_train.npy": lambda p: p.unlink(),
           "predictions_test.npz": lambda p: p.write_bytes(p.read_bytes()[:300]),
           "config.json": lambda p: p.write_bytes(b"\xff\xfe{not utf-8"),
           "calibration.json": lambda p: p.write_text("[1]"),
           "calibration.json ": corrupt_etas,                      # a negative bin factor
           "predictions_test.npz ": lambda p: rewrite_npz(p, sigma=None),
           "predictions_test.npz  ": nan_sigma}                    # one NaN sigma (Gaussian)
  for key, damage in cases.items():
    name = key.strip()
    wd = tmp_path / f"{name.replace('/', '_')}_{len(key)}"
    shutil.copytree(wd0, wd)
    damage(wd / name)
    rc, _, err = hypuc(capsys, "evaluate", "--workdir", wd)
    line = one_line_error(rc, err)
    assert name.split("/")[-1] in line, (key, line)
    if key == "predictions_test.npz  ":
      assert "1 of" in line and "sigma" in line and "[3]" in line
  wd = tmp_path / "scaler"
  shutil.copytree(wd0, wd)
  (wd / "scaler.json").write_text("{}")
  rc, _, err = hypuc(capsys, "predict", "--workdir", wd, "--data", f"csv:{data}",
                      "--output", tmp_path / "p.csv")
  assert "scaler.json" in one_line_error(rc, err) and not (tmp_path / "p.csv").exists()


def test_predict_refuses_non_finite_predictions(tabular, capsys, monkeypatch):
  """Inputs far outside the training data can overflow the model to NaN/inf (the
  review's case: 3e38 in a column of std 0.5); the records are named, nothing is written."""
  root, data, wd, _ = tabular
  real = train.predict

  def overflowing(workdir, x, **kwargs):
    mu, sigma = real(workdir, x, **kwargs)
    mu, sigma = np.array(mu), np.array(sigma)
    mu[2], sigma[7] = np.nan, np.inf
    return mu, sigma

  monkeypatch.setattr(train, "predict", overflowing)
  out = root / "p_overflow.csv"
  rc, _, err = hypuc(capsys, "predict", "--workdir", wd, "--data", f"csv:{data}",
                      "--output", out)
  line = one_line_error(rc, err)
  assert "--data" in line and "1 of 400 predicted mu" in line and "[2]" in line
  assert not out.exists()
  with pytest.raises(workflow.WorkflowError, match=r"x.npz: 1 of 3 predicted sigma .*\[1\]"):
    workflow._sigma_or_constant(np.zeros(3), np.r_[1.0, np.nan, 1.0], None, "x.npz")
  # A point model's sigma is its constant, whatever the file holds.
  np.testing.assert_array_equal(
      workflow._sigma_or_constant(np.zeros(3), np.full(3, np.nan), 0.5, "x.npz"), np.full(3, 0.5))


def test_predict_csv_quotes_a_threshold_name_with_a_comma(tmp_path, capsys):
  """The target column "k, mmol" names the threshold column "p_k, mmol>4.5"; the CSV
  must read back (csv module) with one value per column."""
  x, y, split = _table(200, 4)
  data = tmp_path / "c.csv"
  _write_csv(data, [*FEATURES, "k, mmol", "part"],
             [[*r.tolist(), float(t), s] for r, t, s in zip(x, y, split)])
  wd = tmp_path / "run"
  assert hypuc(capsys, "train", "--workdir", wd, "--data", f"csv:{data}?split=part&above=4.5",
               "--target", "k, mmol", *FAST)[0] == 0
  for cmd in ("calibrate", "correct"):
    assert hypuc(capsys, cmd, "--workdir", wd)[0] == 0
  out = tmp_path / "p.csv"
  rc, _, err = hypuc(capsys, "predict", "--workdir", wd, "--data", f"csv:{data}",
                      "--output", out)
  assert rc == 0, err
  with open(out, newline="") as f:
    header, *rows = list(csv.reader(f))
  assert "p_k, mmol>4.5" in header and header[-3:] == ["entropy", "flag", "out_of_range"]
  assert all(len(r) == len(header) for r in rows) and len(rows) == 200
  flags = [r[header.index("flag")] for r in rows]
  assert set(flags) <= {"0", "1"}
  probs = np.array([float(r[header.index("p_k, mmol>4.5")]) for r in rows])
  assert np.all((probs >= 0) & (probs <= 1))


def test_results_get_the_umask_permissions(tabular, capsys, tmp_path):
  """Files written through temporary names get open()'s mode (0666 & ~umask), not 0600."""
  import os
  import stat

  _, data, wd0, _ = tabular
  wd = tmp_path / "run"
  shutil.copytree(wd0, wd)
  old = os.umask(0o027)
  try:
    for cmd in ("calibrate", "correct", "evaluate"):
      assert hypuc(capsys, cmd, "--workdir", wd)[0] == 0
    assert hypuc(capsys, "predict", "--workdir", wd, "--data", f"csv:{data}",
                 "--output", tmp_path / "p.csv")[0] == 0
  finally:
    os.umask(old)
  mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)
  for name in (workflow.CALIBRATION, workflow.EVAL, "outputs_test.npz",
               "corrections/manifest.json"):
    assert mode(wd / name) == 0o640, name
  assert mode(wd / workflow.CORRECTIONS) == 0o750
  assert mode(tmp_path / "p.csv") == 0o640


def test_a_run_trained_on_npz_columns_needs_the_csv_features_named(tabular, capsys, tmp_path,
                                                                   caplog):
  """npz features have no names: a csv's columns cannot be matched to them by name,
  and taking them in file order silently mixed them up (here: reversed)."""
  x, y, split = _table(400, 0)
  np.savez(tmp_path / "tab.npz", x=x.astype(np.float32), y=y.astype(np.float32))
  wd = tmp_path / "run"
  assert cli.main(["train", "--workdir", str(wd), "--data", f"npz:{tmp_path / 'tab.npz'}",
                   *FAST]) == 0
  for cmd in ("calibrate", "correct"):
    assert cli.main([cmd, "--workdir", str(wd)]) == 0
  new, _, _ = _table(12, 5)
  data = tmp_path / "rev.csv"
  _write_csv(data, ["c", "b", "a"], [r[::-1].tolist() for r in new])
  out = tmp_path / "p.csv"
  rc, _, err = hypuc(capsys, "predict", "--workdir", wd, "--data", f"csv:{data}",
                     "--output", out)
  err = one_line_error(rc, err)
  assert "trained on unnamed features" in err and "features=" in err
  assert not out.exists()
  rc, _, err = hypuc(capsys, "predict", "--workdir", wd, "--data", f"csv:{data}?features=a,b,c",
                     "--output", out)
  assert rc == 0, err
  want, _ = train.predict(str(wd), new.astype(np.float32))
  np.testing.assert_allclose([float(r["mu"]) for r in _read(out)], want, rtol=1e-5, atol=1e-6)
  # The npz array name "y" is not a csv column: one named y is a feature like any
  # other (it was refused as "the target column 'y' is also listed as a feature"),
  # and without features= a csv column y is not taken as labels by default.
  named_y = tmp_path / "xyz.csv"
  _write_csv(named_y, ["x", "y", "z"], new.tolist())
  caplog.clear()
  with caplog.at_level("WARNING"):
    rc, _, err = hypuc(capsys, "predict", "--workdir", wd, "--data",
                       f"csv:{named_y}?features=x,y,z", "--output", out)
  assert rc == 0, err
  assert "not read as labels" not in caplog.text        # a feature: no advice to read it
  rows = _read(out)
  assert "y" not in rows[0]
  np.testing.assert_allclose([float(r["mu"]) for r in rows], want, rtol=1e-5, atol=1e-6)
  labelled = tmp_path / "aby.csv"                  # a label column y beside the features:
  _write_csv(labelled, ["a", "b", "c", "y"], [[*r.tolist(), 4.0] for r in new])
  with caplog.at_level("WARNING"):                 # said, and read with target=y
    assert hypuc(capsys, "predict", "--workdir", wd, "--data",
                 f"csv:{labelled}?features=a,b,c", "--output", out)[0] == 0
  assert "column 'y' is not read as labels" in caplog.text and "y" not in _read(out)[0]
  assert hypuc(capsys, "predict", "--workdir", wd, "--data",
               f"csv:{labelled}?features=a,b,c&target=y", "--output", out)[0] == 0
  assert [r["y"] for r in _read(out)] == ["4.0"] * len(new)


@pytest.mark.parametrize("scale, named", [(3e37, "--data"), (1e-33, "weighting.method")])
def test_overwrite_with_labels_the_fits_refuse_keeps_the_finished_run(tabular, capsys, tmp_path,
                                                                     scale, named):
  """The scaler (labels overflowing float32 once centred) and the KDE weighting (labels
  too finely spread for its binned sums) refuse some labels; they were fitted only after
  `--overwrite` had deleted the finished run, which the error then left behind gone."""
  _, _, wd0, (x, y, split) = tabular
  wd = tmp_path / "run"
  shutil.copytree(wd0, wd)
  data = tmp_path / "bad.csv"
  rng = np.random.default_rng(3)
  _write_csv(data, [*FEATURES, "target", "part"],
             [[*r.tolist(), scale * (1.0 + rng.normal()), s] for r, s in zip(x, split)])
  before = _files(wd)
  for command in ("train", "run"):
    target = wd if command == "train" else tmp_path / "both"
    if command == "run":
      shutil.copytree(wd0, target / "hypuc")
      before_run = _files(target)
    rc, _, err = hypuc(capsys, command, "--workdir", target, "--data",
                       f"csv:{data}?split=part&target=target", *FAST, "--overwrite")
    line = one_line_error(rc, err)
    assert named in line and "bad.csv" in line, line
    assert _files(target) == (before if command == "train" else before_run)


def test_predict_writes_an_infinite_label_as_inf_not_as_missing(tabular, capsys, tmp_path):
  """A label cell of inf came out as an empty cell, the mark of a missing label."""
  root, _, wd, _ = tabular
  x, y, _ = _table(4, 9)
  labels = [float(y[0]), float("inf"), "", float("-inf")]
  data = tmp_path / "l.csv"
  _write_csv(data, [*FEATURES, "target"], [[*r.tolist(), t] for r, t in zip(x, labels)])
  out = tmp_path / "p.csv"
  rc, _, err = hypuc(capsys, "predict", "--workdir", wd, "--data", f"csv:{data}",
                     "--output", out)
  assert rc == 0, err
  got = [r["y"] for r in _read(out)]
  assert got[1:] == ["inf", "", "-inf"] and float(got[0]) == pytest.approx(y[0], rel=1e-6)
  _write_csv(data, [*FEATURES, "target"], [[*r.tolist(), t] for r, t in zip(x, labels[1:])])
  assert hypuc(capsys, "predict", "--workdir", wd, "--data", f"csv:{data}",   # no finite one
               "--output", out)[0] == 0
  assert [r["y"] for r in _read(out)] == ["inf", "", "-inf"]
