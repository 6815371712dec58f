"""Tests of input checks in hypuc_jax.data (readers, sources, pipeline).

Bad options and files must raise ValueError naming the option or file;
good inputs must load what an independent reader sees (pandas, numpy
indexing of the array that was written, closed forms).
"""
import logging
import zipfile

import numpy as np
import pandas as pd
import pytest
import wfdb

from csv_files import write_csv
from hypuc_jax.data import LEAD_NAMES, RowView, Scaler, batch_iterator, load, simulate
from hypuc_jax.data import wfdb_records


# ------------------------------------------------------------------ wfdb options

FS = 100


@pytest.fixture
def wfdb_dir(tmp_path):
    """4 records of 2 s at 100 Hz with a label table."""
    rng = np.random.default_rng(0)
    for k in range(4):
        sig = rng.normal(size=(2 * FS, 12)) * 0.3
        wfdb.wrsamp(f"r{k}", fs=FS, units=["mV"] * 12, sig_name=list(LEAD_NAMES),
                    p_signal=sig, fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12,
                    write_dir=str(tmp_path))
    write_csv(tmp_path / "labels.csv", ["record", "K"], [[f"r{k}", 4.0 + k] for k in range(4)])
    return tmp_path


@pytest.mark.parametrize("opts,match", [
    ("duration=-0.5", "option duration: expected a finite number > 0, got '-0.5'"),
    ("duration=0", "option duration: expected a finite number > 0"),
    ("duration=nan", "option duration: expected a finite number > 0"),
    ("duration=inf", "option duration: expected a finite number > 0"),
    ("duration=0.001", "option duration: expected 1 to 2147483647 samples"),   # 0.1 samples
    ("rate=0", "option rate: expected a finite number > 0, got '0'"),
    ("rate=-100", "option rate: expected a finite number > 0"),
    ("rate=nan", "option rate: expected a finite number > 0"),
    ("rate=inf", "option rate: expected a finite number > 0"),
    # finite but absurd: failed as "Maximum allowed size exceeded", or printed 300 digits
    ("rate=1e300", "option rate: expected at most 1e\\+06 Hz, got '1e300'"),
    ("duration=1e300", "option duration: expected 1 to 2147483647 samples per lead"),
])
def test_wfdb_duration_and_rate_must_be_finite_and_positive(wfdb_dir, opts, match):
    with pytest.raises(ValueError, match=match) as err:
        load(f"wfdb:{wfdb_dir}?{opts}")
    assert f"wfdb:{wfdb_dir}?{opts}" in str(err.value)               # names the spec


def test_wfdb_duration_cuts_to_round_duration_times_rate_samples(wfdb_dir):
    full = load(f"wfdb:{wfdb_dir}")
    ref = np.stack([wfdb.rdrecord(str(wfdb_dir / f"r{k}")).p_signal for k in range(4)])
    np.testing.assert_allclose(full.x, ref, atol=1e-6)              # 100 Hz: no resampling
    for duration, n_time in ((0.5, 50), (0.006, 1), (2, 200)):
        ds = load(f"wfdb:{wfdb_dir}?duration={duration}")
        assert ds.x.shape == (4, n_time, 12)
        np.testing.assert_allclose(ds.x, ref[:, :n_time], atol=1e-6)


def test_wfdb_reader_checks_its_arguments_and_too_low_rates(wfdb_dir):
    kw = dict(record_col="record", target="K", split_col=None)
    for rate, duration, match in ((100, -0.5, "duration: expected a finite number of seconds > 0"),
                                  (100, float("nan"), "duration: expected"),
                                  (100, 0.001, r"duration: expected round\(duration \* rate\)"),
                                  (0, None, "rate: expected a finite sampling rate > 0"),
                                  (float("inf"), None, "rate: expected a finite sampling rate")):
        with pytest.raises(ValueError, match=match):
            wfdb_records.read_wfdb_dir(str(wfdb_dir), str(wfdb_dir / "labels.csv"), rate=rate,
                                  duration=duration, **kw)
    with pytest.raises(ValueError, match=r"r0: rate: expected at least 1/1000 of the record's 100 Hz"):
        load(f"wfdb:{wfdb_dir}?rate=0.01")


# ------------------------------------------------------- thresholds and options

@pytest.fixture
def table(tmp_path):
    rows = [[i, 2.0 * i, 4.0 + 0.1 * i] for i in range(6)]
    return write_csv(tmp_path / "tab.csv", ["a", "b", "K"], rows)


@pytest.mark.parametrize("opts,match", [
    ("above=200,200", r"option above: expected distinct thresholds, but 200 \('K>200'\) repeats "
                      r"the threshold 'K>200' \(above 200\) given before"),
    ("below=3,1,3", "option below: expected distinct thresholds"),
    ("task=potassium&above=5.5", r"option above: .*repeats the threshold 'K>5.5' \(above 5.5\) "
                                 "of the task 'potassium'"),
    ("task=potassium&below=3.5", "option below: .*'K<3.5' .* of the task 'potassium'"),
    ("above=nan", "option above: expected finite numbers, got 'nan'"),
    ("below=inf", "option below: expected finite numbers, got 'inf'"),
    ("above=1,-inf", "option above: expected finite numbers"),
    ("above=", "option above: expected one or more numbers, got ''"),
    ("below=,", "option below: expected one or more numbers, got ','"),
])
def test_thresholds_must_be_finite_and_distinct(table, opts, match):
    with pytest.raises(ValueError, match=match) as err:
        load(f"csv:{table}?target=K&{opts}")
    assert "tab.csv" in str(err.value)


def test_distinct_thresholds_load_in_order(table):
    ds = load(f"csv:{table}?target=K&above=5,6&below=5&task=potassium")
    got = [(t.name, t.value, t.direction) for t in ds.task.thresholds]
    assert got == [("K>5.5", 5.5, "above"), ("K>6.5", 6.5, "above"), ("K<3.5", 3.5, "below"),
                   ("K>5", 5.0, "above"), ("K>6", 6.0, "above"), ("K<5", 5.0, "below")]
    assert len({name for name, _, _ in got}) == len(got)


def test_simulated_thresholds_and_unit_checked_before_simulating():
    with pytest.raises(ValueError, match=r"option above: .*'potassium>6.5'.*'K>6.5'.*task 'potassium'"):
        load("simulated:potassium?n=2&duration=1&above=6.5")
    with pytest.raises(ValueError, match=r"option unit: simulated potassium labels are in mmol/L.*"
                                         r"got 'mEq/L/h'"):
        load("simulated:potassium?n=2&duration=1&unit=mEq/L/h")
    with pytest.raises(ValueError, match="option unit: simulated lvef labels are in %"):
        load("simulated:lvef?n=2&duration=1&unit=fraction")
    # another preset's regions and thresholds would describe other labels (every
    # potassium label fell in lvef's "severe" range)
    with pytest.raises(ValueError, match=r"option task: simulated potassium data .*got "
                                         r"task='lvef' \(simulate that preset instead"):
        load("simulated:potassium?n=2&duration=1&task=lvef")
    ds = load("simulated:potassium?n=2&duration=1&unit=mmol/L&task=potassium")
    assert ds.task.unit == "mmol/L" and ds.task.thresholds[0].name == "K>5.5"
    x, y = simulate(0, 2, rate=100, duration=1.0)
    np.testing.assert_array_equal(ds.y, y)


def test_a_task_preset_keeps_its_unit(table):
    """task=potassium brings cut-offs in mmol/L: labels in another unit would be cut
    at the wrong values (unit compared without case or spaces)."""
    with pytest.raises(ValueError, match=r"option unit: the ranges and thresholds of task "
                                         r"'potassium' are in mmol/L, got 'mg/dL'"):
        load(f"csv:{table}?target=K&task=potassium&unit=mg/dL")
    ds = load(f"csv:{table}?target=K&task=potassium&unit=MMOL / l")
    assert ds.task.unit == "MMOL / l" and ds.task.thresholds[0].value == 5.5
    assert load(f"csv:{table}?target=K&unit=mg/dL&above=20").task.unit == "mg/dL"
    assert load("simulated:potassium?n=2&duration=1&unit=mmol/l").task.unit == "mmol/L"
    # mEq/L is mmol/L for potassium (a monovalent ion): the same numbers
    assert load(f"csv:{table}?target=K&task=potassium&unit=mEq/L").task.unit == "mEq/L"
    assert load("simulated:potassium?n=2&duration=1&unit=meq/l").task.unit == "mmol/L"
    with pytest.raises(ValueError, match="option unit: the ranges and thresholds of task 'lvef'"):
        load(f"csv:{table}?target=K&task=lvef&unit=mEq/L")


@pytest.mark.parametrize("opts,match", [
    ("seed=9223372036854775808", r"seed: expected an integer in \[0, 2\*\*32\), got 9223372036854775808"),
    ("seed=4294967296", r"seed: expected an integer in \[0, 2\*\*32\)"),
    ("seed=-1", "seed: expected an integer"),
    ("rate=nan", "option rate: expected a finite number > 0"),
    ("rate=inf", "option rate: expected a finite number > 0"),
    ("duration=-1", "option duration: expected a finite number > 0"),
])
def test_simulated_options_named(opts, match):
    with pytest.raises(ValueError, match=match) as err:
        load(f"simulated:potassium?n=2&{opts}")
    assert "simulated:potassium" in str(err.value)


def test_npz_rate_option_finite_positive(tmp_path):
    np.savez(tmp_path / "s.npz", x=np.zeros((3, 10, 2), np.float32), y=np.zeros(3, np.float32))
    for value in ("-5", "0", "nan", "inf"):
        with pytest.raises(ValueError, match=f"option rate: expected a finite number > 0, got '{value}'"):
            load(f"npz:{tmp_path}/s.npz?rate={value}")
    assert load(f"npz:{tmp_path}/s.npz?rate=250").rate == 250.0


# ------------------------------------------------------------------------ csv

def test_empty_csv_column_is_skipped_like_a_text_column(tmp_path, caplog):
    path = tmp_path / "b.csv"
    path.write_text("a,b,t,notes\n1,2,3,\n4,5,6,\n7,8,9,\n")
    with caplog.at_level(logging.WARNING):
        ds = load(f"csv:{path}?target=t")
    assert "skipped non-numeric columns ['notes']" in caplog.text
    ref = pd.read_csv(path).dropna(axis=1, how="all")
    assert ds.feature_names == ("a", "b")
    np.testing.assert_array_equal(ds.x, ref[["a", "b"]].to_numpy(np.float32))
    np.testing.assert_array_equal(ds.y, ref["t"].to_numpy(np.float32))
    with pytest.raises(ValueError, match=r"b.csv: feature column 'notes' is empty: expected numbers, "
                                         "got no value in any of its 3 rows"):
        load(f"csv:{path}?target=t&features=a,notes")
    with pytest.raises(ValueError, match=r"b.csv: target column 'notes' is empty"):
        load(f"csv:{path}?target=notes")
    unlabelled = load(f"csv:{path}?target=notes", labels_optional=True)   # prediction: no labels
    assert np.isnan(unlabelled.y).all() and unlabelled.feature_names == ("a", "b", "t")


def test_csv_with_utf8_bom_names_columns_like_pandas(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffage,bmi,target\n50,22.5,100\n61,30.1,180\n".encode("utf-8"))
    ref = pd.read_csv(path, encoding="utf-8-sig")
    ds = load(f"csv:{path}?target=target")
    assert list(ds.feature_names) == list(ref.columns[:2]) == ["age", "bmi"]
    np.testing.assert_array_equal(ds.x, ref[["age", "bmi"]].to_numpy(np.float32))
    ds = load(f"csv:{path}?target=target&features=age")       # the first column by name
    np.testing.assert_array_equal(ds.x[:, 0], ref["age"].to_numpy(np.float32))


def test_one_column_csv_keeps_a_missing_cell_as_a_record_like_pandas(tmp_path):
    # pandas writes the missing value of a one-column table as a line `""`; it is a
    # record (NaN), not a blank line: dropping it shifted every later prediction.
    from hypuc_jax.data import csv_table
    path = tmp_path / "one.csv"
    pd.DataFrame({"a": [0.1, 0.2, np.nan, 0.4]}).to_csv(path, index=False)
    path.write_text(path.read_text() + "\n   \n")          # blank lines: skipped, as pandas
    ref = pd.read_csv(path)["a"].to_numpy(np.float32)
    assert ref.size == 4
    x, y, _, names = csv_table.read_csv_table(str(path), "t", ["a"], None, labels_optional=True)
    np.testing.assert_array_equal(x[:, 0], ref)                # NaN in row 2, 0.4 in row 3
    assert names == ["a"] and np.isnan(y).all()
    # In a wider table the same line is a record with every cell missing (pandas):
    # training drops it as a row with NaN, it is not a malformed row.
    wide = tmp_path / "wide.csv"
    wide.write_text('a,b,t\n1,2,3\n""\n4,5,6\n7,8,9\n')
    ref = pd.read_csv(wide)
    assert len(ref) == 4 and ref.iloc[1].isna().all()
    x, y, _, _ = csv_table.read_csv_table(str(wide), "t", None, None, labels_optional=True)
    np.testing.assert_array_equal(x, ref[["a", "b"]].to_numpy(np.float32))
    np.testing.assert_array_equal(y, ref["t"].to_numpy(np.float32))
    ds = load(f"csv:{wide}?target=t")
    np.testing.assert_array_equal(ds.y, [3, 6, 9])


def test_csv_duplicate_columns_refused_only_where_they_are_read(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("a,note,b,note,t\n1,x,2,y,3\n4,z,5,w,6\n")
    ref = pd.read_csv(path)                                    # pandas: note, note.1
    ds = load(f"csv:{path}?target=t&features=a,b")             # the duplicates are not read
    np.testing.assert_array_equal(ds.x, ref[["a", "b"]].to_numpy(np.float32))
    np.testing.assert_array_equal(ds.y, ref["t"].to_numpy(np.float32))
    for spec in (f"csv:{path}?target=t", f"csv:{path}?target=t&features=a,note",
                 f"csv:{path}?target=note&features=a"):
        with pytest.raises(ValueError, match=r"dup.csv: duplicate column names \['note'\]"):
            load(spec)


def test_csv_values_beyond_float32_named_not_called_nan(tmp_path):
    big = float(np.finfo(np.float32).max)
    path = write_csv(tmp_path / "e.csv", ["a", "b", "t"], [[1, 2, 3], [1e39, 5, 6], [7, 8, 9]])
    with pytest.raises(ValueError, match=r"e.csv: column 'a': values exceed the float32 range "
                                         r"\(\|value\| <= 3.403e\+38\), first: row 1 = 1e\+39"):
        load(f"csv:{path}?target=t")
    with pytest.raises(ValueError, match="column 'a': values exceed the float32 range"):
        load(f"csv:{path}?target=t", labels_optional=True)
    path = write_csv(tmp_path / "f.csv", ["a", "t"], [[1, -2e40], [2, 3]])
    with pytest.raises(ValueError, match=r"f.csv: column 't': values exceed the float32 range"):
        load(f"csv:{path}?target=t")
    path = write_csv(tmp_path / "g.csv", ["a", "t"], [[big, 1], [-3e38, 2], ["inf", 3]])
    ds = load(f"csv:{path}?target=t")                           # in range: kept; inf: dropped
    np.testing.assert_array_equal(ds.x[:, 0], np.array([big, -3e38], np.float32))


def test_values_float32_cannot_keep_apart_are_refused(tmp_path):
    """Labels 1e9 + 100 z: float32 steps of 64 merged 300 labels into ~13, and the
    run trained and scored on those (MAE 70.6 reported, 68.2 true). Refused,
    naming the column and the offset to subtract; a feature alike; float32 labels
    of an npz were never float64; ordinary float64 labels load."""
    rng = np.random.default_rng(2)
    z = rng.normal(size=(300, 2))
    rows = [[float(a), float(1e9 + 100 * b)] for a, b in z]
    path = write_csv(tmp_path / "big.csv", ["a", "t"], rows)
    loss = np.max(np.abs(np.float32(1e9 + 100 * z[:, 1]) - (1e9 + 100 * z[:, 1])))
    assert loss > 1e-3 * np.std(100 * z[:, 1])                  # the premise, in numpy
    with pytest.raises(ValueError, match=r"big.csv: column 't': float32, the precision the "
                                         r"model works in, rounds its values by up to \d.*"
                                         r"subtract an offset first \(e.g. the column minus \d"):
        load(f"csv:{path}?target=t")
    path = write_csv(tmp_path / "feat.csv", ["a", "t"], [[b, a] for a, b in rows])
    with pytest.raises(ValueError, match=r"feat.csv: column 'a': float32"):
        load(f"csv:{path}?target=t")
    np.savez(tmp_path / "big.npz", x=z.astype(np.float32), y=1e9 + 100 * z[:, 1])
    with pytest.raises(ValueError, match=r"big.npz: array 'y': float32.*the array minus \d"):
        load(f"npz:{tmp_path / 'big.npz'}")
    np.savez(tmp_path / "ok.npz", x=z.astype(np.float32), y=4.5 + 0.6 * z[:, 1])
    np.testing.assert_array_equal(load(f"npz:{tmp_path / 'ok.npz'}").y,
                                  np.float32(4.5 + 0.6 * z[:, 1]))
    # npz: int64 labels and float64 tabular features are checked as well
    np.savez(tmp_path / "int.npz", x=z.astype(np.float32),
             y=1_000_000_000 + rng.integers(0, 200, 300))
    with pytest.raises(ValueError, match=r"int.npz: array 'y': float32"):
        load(f"npz:{tmp_path / 'int.npz'}")
    np.savez(tmp_path / "bigx.npz", x=np.stack([z[:, 0], 1e9 + 100 * z[:, 1]], 1),
             y=z[:, 0].astype(np.float32))
    with pytest.raises(ValueError, match=r"bigx.npz: array 'x\[:, 1\]': float32"):
        load(f"npz:{tmp_path / 'bigx.npz'}")


def test_the_float32_check_spares_predict_batches_and_lone_outliers(tmp_path):
    """Two records to predict, 1013.25 and 1013.26 (sd 0.005): float32 moves them
    by 1e-5, 0.2% of that batch's own spread; the model trained on the same
    rounding, so predict (labels optional) must take them. A training column of
    4999 x 100.0 and one 100.1 (float32 moves the outlier by 1.5e-6) loads too."""
    path = write_csv(tmp_path / "p.csv", ["pressure", "age", "k"],
                     [[1013.25, 50, 4.1], [1013.26, 51, 4.2]])
    ds = load(f"csv:{path}?target=k", labels_optional=True)
    np.testing.assert_array_equal(ds.x[:, 0], np.float32([1013.25, 1013.26]))
    np.savez(tmp_path / "p.npz", x=np.float32([[1.0], [2.0]]), y=np.array([1013.25, 1013.26]))
    assert load(f"npz:{tmp_path / 'p.npz'}", labels_optional=True).y.shape == (2,)
    rows = [[float(i), 100.0] for i in range(4999)] + [[4999.0, 100.1]]
    path = write_csv(tmp_path / "lone.csv", ["a", "t"], rows)
    assert load(f"csv:{path}?target=t").y[-1] == np.float32(100.1)


# ------------------------------------------------------------------------ npz

def test_npz_with_non_npy_x_names_the_file(tmp_path):
    path = tmp_path / "junk.npz"
    y = np.zeros(3, np.float32)
    np.savez(tmp_path / "ok.npz", y=y)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("x.npy", b"this is not an npy array at all" * 4)
        with zipfile.ZipFile(tmp_path / "ok.npz") as ok:
            zf.writestr("y.npy", ok.read("y.npy"))
    with pytest.raises(ValueError, match=r"junk.npz: member 'x.npy' is not a \.npy array"):
        load(f"npz:{path}")
    with pytest.raises(ValueError, match="junk.npz: expected numeric x"):
        load(f"npz:{path}?mmap=0")


@pytest.mark.parametrize("mmap", [0, 1])
def test_npz_without_rows_names_the_file(tmp_path, mmap):
    np.savez(tmp_path / "e.npz", x=np.zeros((0, 3), np.float32), y=np.zeros(0, np.float32))
    with pytest.raises(ValueError, match=r"e.npz: expected at least one row, got x of shape \(0, 3\)"):
        load(f"npz:{tmp_path}/e.npz?mmap={mmap}")
    np.savez(tmp_path / "f.npz", x=np.zeros((4, 0, 12), np.float32), y=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"f.npz: expected x with at least one time sample and lead"):
        load(f"npz:{tmp_path}/f.npz?mmap={mmap}")


@pytest.mark.parametrize("mmap", [0, 1])
def test_npz_float64_beyond_float32_named(tmp_path, mmap):
    x = np.ones((5, 4, 2))
    x[3, 2, 1] = -1e39
    np.savez(tmp_path / "b.npz", x=x, y=np.zeros(5))
    with pytest.raises(ValueError, match=r"b.npz: array 'x' \(float64\): values exceed the float32 "
                                         r"range .*first: row 3 = -1e\+39"):
        load(f"npz:{tmp_path}/b.npz?mmap={mmap}")
    np.savez(tmp_path / "c.npz", x=np.ones((2, 3)), y=np.array([1.0, 5e38]))
    with pytest.raises(ValueError, match=r"c.npz: array 'y' \(float64\).*row 1 = 5e\+38"):
        load(f"npz:{tmp_path}/c.npz?mmap={mmap}")


@pytest.mark.parametrize("mmap", [0, 1])
@pytest.mark.parametrize("array, dtype", [("x", np.complex64), ("y", np.complex128),
                                          ("x", "timedelta64[s]"), ("y", "timedelta64[s]")])
def test_npz_complex_and_timedelta_arrays_refused(tmp_path, mmap, array, dtype):
    """Their values are not real numbers: casting would drop the imaginary part
    or read durations as numbers, silently."""
    arrays = {"x": np.ones((4, 3)), "y": np.arange(4.0)}
    arrays[array] = arrays[array].astype(dtype)
    np.savez(tmp_path / "c.npz", **arrays)
    with pytest.raises(ValueError, match=f"c.npz: expected numeric {array} of shape"):
        load(f"npz:{tmp_path}/c.npz?mmap={mmap}")


@pytest.mark.parametrize("array", ["x", "y", "split"])
def test_npz_object_arrays_named(tmp_path, array):
    arrays = {"x": np.ones((4, 3)), "y": np.arange(4.0),
              "split": np.array(["train", "train", "val", "test"])}
    arrays[array] = arrays[array].astype(object)
    np.savez(tmp_path / "o.npz", **arrays)
    with pytest.raises(ValueError, match=f"o.npz: array '{array}(.npy)?' holds Python objects"):
        load(f"npz:{tmp_path}/o.npz?mmap={0 if array == 'x' else 1}")


@pytest.mark.parametrize("mmap", [0, 1])
def test_npz_truncated_member_named(tmp_path, mmap):
    """A member shorter than its .npy header says: with a memory map the missing
    bytes would be read from the next zip entry."""
    x, y = np.arange(40, dtype=np.float32).reshape(10, 4), np.arange(10, dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    with zipfile.ZipFile(tmp_path / "t.npz", "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("x.npy", (tmp_path / "x.npy").read_bytes()[:-40])
        zf.write(tmp_path / "y.npy", "y.npy")
    match = "t.npz: array 'x'" + (" is truncated" if mmap else ": unreadable")
    with pytest.raises(ValueError, match=match):
        load(f"npz:{tmp_path}/t.npz?mmap={mmap}")


@pytest.mark.parametrize("mmap", [0, 1])
def test_npz_with_bytes_before_the_zip_named(tmp_path, mmap):
    np.savez(tmp_path / "ok.npz", x=np.ones((4, 3)), y=np.arange(4.0))
    (tmp_path / "p.npz").write_bytes(b"junk" + (tmp_path / "ok.npz").read_bytes())
    with pytest.raises(ValueError, match="p.npz: unreadable npz file"):
        load(f"npz:{tmp_path}/p.npz?mmap={mmap}")


def test_npz_float16_loads_without_warnings(tmp_path, recwarn):
    x = np.linspace(-2, 2, 12, dtype=np.float16).reshape(4, 3)
    np.savez(tmp_path / "h.npz", x=x, y=np.arange(4, dtype=np.float16))
    ds = load(f"npz:{tmp_path}/h.npz")
    np.testing.assert_array_equal(np.asarray(ds.x), x)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_csv_features_listed_twice_refused(table):
    with pytest.raises(ValueError, match=r"tab.csv: feature columns \['a'\] are listed more "
                                         "than once"):
        load(f"csv:{table}?target=K&features=a,a")


@pytest.mark.parametrize("unit, factor", [("V", 1e3), ("uV", 1e-3), ("\u00b5V", 1e-3),
                                          ("\u03bcV", 1e-3), ("nV", 1e-6), ("mV", 1.0)])
def test_wfdb_units_converted_to_millivolts(tmp_path, unit, factor):
    rng = np.random.default_rng(0)
    sig = rng.normal(size=(2 * FS, 12)) * 0.3 / factor           # 0.3 mV in the unit
    wfdb.wrsamp("r0", fs=FS, units=[unit] * 12, sig_name=list(LEAD_NAMES), p_signal=sig,
                fmt=["32"] * 12, adc_gain=[1e6 * factor] * 12, baseline=[0] * 12,
                write_dir=str(tmp_path))
    write_csv(tmp_path / "labels.csv", ["record", "K"], [["r0", 4.0]])
    ds = load(f"wfdb:{tmp_path}")
    np.testing.assert_allclose(np.asarray(ds.x)[0], sig * factor, rtol=1e-4, atol=1e-6)


def _write_uv_record(directory, name, sig_mv):
    wfdb.wrsamp(name, fs=FS, units=["\u00b5V"] * 12, sig_name=list(LEAD_NAMES),
                p_signal=sig_mv * 1e3, fmt=["32"] * 12, adc_gain=[1000.0] * 12,
                baseline=[0] * 12, write_dir=str(directory))


def test_wfdb_multisegment_and_latin1_headers_read_their_units(tmp_path):
    """wfdb reports "\u00b5V" as "V": the units come from the header text, of the
    first segment for a multi-segment record, in UTF-8 or Latin-1."""
    rng = np.random.default_rng(1)
    seg = [rng.normal(size=(FS, 12)) * 0.3 for _ in range(2)]
    for k in range(2):
        _write_uv_record(tmp_path, f"s{k}", seg[k])
    (tmp_path / "ms.hea").write_text(f"ms/2 12 {FS} {2 * FS}\ns0 {FS}\ns1 {FS}\n")
    _write_uv_record(tmp_path, "lat", seg[0])
    hea = tmp_path / "lat.hea"
    hea.write_bytes(hea.read_bytes().decode("utf-8").encode("latin-1"))
    write_csv(tmp_path / "labels.csv", ["record", "K"], [["ms", 4.0], ["lat", 5.0]])
    x = np.asarray(load(f"wfdb:{tmp_path}?duration=1").x)
    np.testing.assert_allclose(x[0], seg[0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(x[1], seg[0], rtol=1e-4, atol=1e-6)
    write_csv(tmp_path / "one.csv", ["record", "K"], [["ms", 4.0]])     # both segments
    np.testing.assert_allclose(np.asarray(load(f"wfdb:{tmp_path}?labels={tmp_path}/one.csv").x)[0],
                               np.concatenate(seg), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("layout_units", ["/mV", ""])
def test_wfdb_variable_layout_takes_units_from_the_data_segments(tmp_path, layout_units):
    """wfdb scales each segment by its own header; the layout header's units
    (mV here, or none) are not the data's (uV)."""
    rng = np.random.default_rng(2)
    seg = [rng.normal(size=(FS, 12)) * 0.3 for _ in range(2)]
    for k in range(2):
        _write_uv_record(tmp_path, f"v{k}", seg[k])
    (tmp_path / "lay.hea").write_text(f"lay 12 {FS} 0\n" + "".join(
        f"~ 0 200{layout_units} 16 0 0 0 0 {name}\n" for name in LEAD_NAMES))
    (tmp_path / "var.hea").write_text(f"var/3 12 {FS} {2 * FS}\nlay 0\nv0 {FS}\nv1 {FS}\n")
    write_csv(tmp_path / "labels.csv", ["record", "K"], [["var", 4.0]])
    np.testing.assert_allclose(np.asarray(load(f"wfdb:{tmp_path}").x)[0], np.concatenate(seg),
                               rtol=1e-4, atol=1e-6)


def test_wfdb_segments_in_different_units_refused(tmp_path):
    rng = np.random.default_rng(3)
    _write_uv_record(tmp_path, "u0", rng.normal(size=(FS, 12)) * 0.3)
    wfdb.wrsamp("m1", fs=FS, units=["mV"] * 12, sig_name=list(LEAD_NAMES),
                p_signal=rng.normal(size=(FS, 12)) * 0.3, fmt=["16"] * 12,
                adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(tmp_path))
    (tmp_path / "mix.hea").write_text(f"mix/2 12 {FS} {2 * FS}\nu0 {FS}\nm1 {FS}\n")
    write_csv(tmp_path / "labels.csv", ["record", "K"], [["mix", 4.0]])
    with pytest.raises(ValueError, match="mix: lead I: its segments are in different units"):
        load(f"wfdb:{tmp_path}")


def test_wfdb_unknown_unit_named(tmp_path):
    sig = np.random.default_rng(0).normal(size=(2 * FS, 12))
    wfdb.wrsamp("r0", fs=FS, units=["NU"] * 12, sig_name=list(LEAD_NAMES), p_signal=sig,
                fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12,
                write_dir=str(tmp_path))
    write_csv(tmp_path / "labels.csv", ["record", "K"], [["r0", 4.0]])
    with pytest.raises(ValueError, match="r0: lead I: unit 'nu': expected mV, uV, V or nV"):
        load(f"wfdb:{tmp_path}")


# -------------------------------------------------------------------- RowView

INDEXES = [
    0, 3, -1, -5, slice(None), slice(1, 4), slice(None, None, 2), slice(-2, None), slice(4, 1, -1),
    np.array([3, 0, 3]), [4, 1], np.array([[0, 1], [2, 3]]), np.array([True, False, True, False, True]),
    Ellipsis, None, (), (0,), (0, 5), (-1, 5, 3), (0, slice(2, 5)), (0, slice(None), 7),
    (slice(1, 3), 2), (slice(None), 5, 3), (slice(1, 4), slice(2, 6), slice(None, None, 3)),
    (np.array([0, 2]), 5), (np.array([0, 2]), np.array([1, 3])), (np.array([0, 2]), slice(None), 3),
    (slice(None), np.array([1, 2])), (slice(0, 3), np.array([1, 2]), 4), (1, np.array([4, 2])),
    (Ellipsis, 0), (0, Ellipsis), (0, None), (Ellipsis, np.array([1, 0])), (2, Ellipsis, 11),
]


@pytest.mark.parametrize("index", INDEXES, ids=repr)
def test_rowview_indexes_like_the_numpy_array_of_its_rows(index):
    base = np.arange(8 * 20 * 12, dtype=np.float32).reshape(8, 20, 12)
    rows = np.array([0, 2, 3, 5, 7])
    view, ref = RowView(base, rows), base[rows]
    got, want = view[index], ref[index]
    assert np.shape(got) == np.shape(want)
    np.testing.assert_array_equal(got, want)


def test_rowview_from_a_memory_mapped_npz(tmp_path):
    x = np.arange(6 * 20 * 12, dtype=np.float32).reshape(6, 20, 12)
    x[1, 3, 4] = np.nan
    np.savez(tmp_path / "r.npz", x=x, y=np.arange(6, dtype=np.float32))
    ds = load(f"npz:{tmp_path}/r.npz?mmap=1")
    ref = x[[0, 2, 3, 4, 5]]
    assert isinstance(ds.x, RowView)
    assert ds.x[0, 5].shape == (12,)
    for index in ((0, 5), (-2, slice(3, 9), 1), (np.array([4, 0]), 7), 2, slice(1, None)):
        np.testing.assert_array_equal(ds.x[index], ref[index])


# --------------------------------------------------------- indices and order

def _xy(n=11):
    x = np.arange(n * 3 * 2, dtype=np.float32).reshape(n, 3, 2) ** 1.5
    return x, np.linspace(1.0, 9.0, n).astype(np.float32)


def test_boolean_masks_and_non_integer_indices_refused():
    x, y = _xy()
    mask = np.zeros(11, bool)
    mask[[1, 4, 8]] = True
    bad = [(mask, "indices: expected integer row numbers, got a boolean mask; use "
                  r"np.flatnonzero\(mask\)"),
           (mask.tolist(), "got a boolean mask"),
           (np.array([0.0, 2.0]), "indices: expected integer row numbers, got dtype float64"),
           (np.array([-1, 2]), r"indices: expected values in \[0, 11\)"),
           (np.array([[0, 1]]), "indices: expected a non-empty 1-D index array")]
    for indices, match in bad:
        with pytest.raises(ValueError, match=match):
            Scaler.fit(x, y, indices)
        with pytest.raises(ValueError, match=match):
            batch_iterator(x, y, indices, 2, train=False)
    with pytest.raises(ValueError, match="indices: expected at least one row"):
        Scaler.fit(x, y, [])
    sc = Scaler.fit(x, y, np.flatnonzero(mask))                # the documented way
    rows = x[mask].reshape(-1, 2).astype(np.float64)
    np.testing.assert_allclose(sc.x_mean, rows.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(sc.x_std, rows.std(axis=0), rtol=1e-5)
    np.testing.assert_allclose(sc.y_mean, y[mask].mean(), rtol=1e-6)


@pytest.mark.parametrize("indices,batch_size", [
    ([5, 3, 1], 8), ([5, 3, 1], 2), ([10, 0, 7, 7, 2, 9, 4], 3), (list(range(10, -1, -1)), 4),
])
def test_eval_batches_keep_the_order_of_indices(tmp_path, indices, batch_size):
    x, y = _xy()
    np.save(tmp_path / "x.npy", x)
    for xs in (x, np.load(tmp_path / "x.npy", mmap_mode="r"),
               RowView(np.concatenate([x[:1], x]), np.arange(1, 12))):
        batches = list(batch_iterator(xs, y, indices, batch_size, train=False))
        mask = np.concatenate([b["mask"] for b in batches]) > 0
        assert mask.sum() == len(indices) and mask[:len(indices)].all()
        np.testing.assert_array_equal(np.concatenate([b["y"] for b in batches])[mask], y[indices])
        np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches])[mask], x[indices])
    parts = [list(batch_iterator(x, y, indices, 2 * batch_size, train=False, process_count=2,
                                 process_index=p)) for p in range(2)]
    glued = np.concatenate([np.concatenate([a["y"][a["mask"] > 0], b["y"][b["mask"] > 0]])
                            for a, b in zip(*parts)])
    np.testing.assert_array_equal(glued, y[indices])          # process slices in order, too
