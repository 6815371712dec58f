"""Data-layer edge cases found by review: each loads what an independent reader
(pandas, numpy, the csv module) sees, or is refused with the column named."""
import logging

import numpy as np
import pandas as pd
import pytest

from csv_files import write_csv
from hypuc_jax.data import Scaler, load


def _table(tmp_path, n=400, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"a": rng.normal(size=n), "flag": np.full(n, 4.2),
                         "y": rng.normal(5.0, 1.0, n)})


@pytest.mark.parametrize("n", [10, 100, 400, 5000])
def test_a_constant_column_is_not_a_float32_precision_problem(tmp_path, n):
    """np.std of a constant 4.2 is ~1e-15 at some lengths, not 0: the precision check
    compared float32's rounding (2e-7) with that and refused the file."""
    df = _table(tmp_path, n)
    df.to_csv(tmp_path / "t.csv", index=False)
    ds = load(f"csv:{tmp_path / 't.csv'}?target=y")
    assert ds.feature_names == ("a", "flag")
    np.testing.assert_array_equal(ds.x[:, 1], np.float32(4.2))
    # a real offset problem is still refused: 1e9 + noise of sd 1 rounds in steps of 64
    # (all to one float32 value: the column's information would be gone)
    df["a"] = 1e9 + df["a"]
    df.to_csv(tmp_path / "o.csv", index=False)
    with pytest.raises(ValueError, match="column 'a': float32.*subtract an offset"):
        load(f"csv:{tmp_path / 'o.csv'}?target=y")


def test_cuts_and_thresholds_that_print_alike_keep_distinct_names(tmp_path):
    df = _table(tmp_path, 50)
    df.to_csv(tmp_path / "t.csv", index=False)
    ds = load(f"csv:{tmp_path / 't.csv'}?target=y&cuts=1234567,1234568,1234569")
    assert list(ds.task.regions.values()) == [(-np.inf, 1234567.0), (1234567.0, 1234568.0),
                                              (1234568.0, 1234569.0), (1234569.0, np.inf)]
    assert len(set(ds.task.regions)) == 4
    ds = load(f"csv:{tmp_path / 't.csv'}?target=y&cuts=3.5,5.5")
    assert list(ds.task.regions) == ["<3.5", "3.5-5.5", ">=5.5"]          # short when distinct
    for above in ("5.5,5.5000001", "5.5000001,5.5"):                # in either order
        ds = load(f"csv:{tmp_path / 't.csv'}?target=y&above={above}")
        assert {t.name: t.value for t in ds.task.thresholds} == {"y>5.5": 5.5,
                                                                 "y>5.5000001": 5.5000001}
    ds = load(f"csv:{tmp_path / 't.csv'}?target=y&cuts=0.1234561,0.1234562")
    assert list(ds.task.regions) == ["<0.1234561", "0.1234561-0.1234562", ">=0.1234562"]
    with pytest.raises(ValueError, match="option above: expected distinct thresholds"):
        load(f"csv:{tmp_path / 't.csv'}?target=y&above=5.5,5.50")


def test_a_pandas_index_column_is_not_a_feature(tmp_path, caplog):
    df = _table(tmp_path, 30)
    df.to_csv(tmp_path / "t.csv")                         # header ",a,flag,y": the index
    assert pd.read_csv(tmp_path / "t.csv").columns[0] == "Unnamed: 0"
    with caplog.at_level(logging.WARNING):
        ds = load(f"csv:{tmp_path / 't.csv'}?target=y")
    assert ds.feature_names == ("a", "flag")
    np.testing.assert_allclose(ds.x[:, 0], df["a"].to_numpy(np.float32))
    assert "column without a name" in caplog.text


def test_missing_value_markers_are_nan_and_mixed_columns_are_named(tmp_path, caplog):
    rows = [[1, "NA", 3], [4, 5, 6], [7, "n/a", 9], [10, 11, "null"], [13, 14, 15]]
    path = write_csv(tmp_path / "t.csv", ["a", "b", "y"], rows)
    want = pd.read_csv(path)                               # pandas' default na_values
    with caplog.at_level(logging.WARNING):
        ds = load(f"csv:{path}?target=y")
    keep = want.notna().all(axis=1).to_numpy()
    assert ds.feature_names == ("a", "b") and keep.sum() == 2
    np.testing.assert_array_equal(ds.x, want[["a", "b"]].to_numpy(np.float32)[keep])
    np.testing.assert_array_equal(ds.y, want["y"].to_numpy(np.float32)[keep])
    assert "NaN/inf per column: 'b' 2, label 1" in caplog.text
    # a number pandas would read as text: an error naming the column, row and cell
    path = write_csv(tmp_path / "m.csv", ["a", "b", "y"],
                     [[1, 2, 3], [4, "1,234", 6], [7, 8, 9], [10, 11, 12]])
    with pytest.raises(ValueError, match=r"feature column 'b' is not numeric \(row 1: '1,234'\)"
                                         r"; a column of numbers with text cells"):
        load(f"csv:{path}?target=y")
    # text columns, even with a few number-like cells ('007', 'Nan' the name, 'infinity'),
    # are still skipped with a note
    cols = {"id": ["abc", "xyz", "007", "q"], "first": ["Anna", "Nan", "Bob", "Eve"],
            "sex": ["M", "F", "0", "1"], "word": ["big", "infinity", "small", "x"]}
    path = write_csv(tmp_path / "s.csv", ["a", *cols, "y"],
                     [[i, *(c[i] for c in cols.values()), i] for i in range(4)])
    assert load(f"csv:{path}?target=y").feature_names == ("a",)


def test_every_row_dropped_names_the_columns(tmp_path, caplog):
    rows = [[1, "nan", 3, 1], [4, 5, "NA", 2], [7, "nan", 9, "NA"]]
    path = write_csv(tmp_path / "t.csv", ["a", "b", "y", "c"], rows)
    with pytest.raises(ValueError, match=r"every one of the 3 rows .*NaN/inf per column: "
                                         r"'b' 2, 'c' 1, label 1"):
        load(f"csv:{path}?target=y")
    # a column without any value is skipped, with a note, as before
    path = write_csv(tmp_path / "e.csv", ["a", "b", "y"], [[1, "nan", 3], [4, "", 6]])
    with caplog.at_level(logging.WARNING):
        assert load(f"csv:{path}?target=y").feature_names == ("a",)
    assert "skipped non-numeric columns ['b']" in caplog.text


def test_scaler_refuses_values_that_overflow_float32_once_centred():
    x = np.full((10, 2), 1.0, np.float32)
    x[:9, 1], x[9, 1] = 3.3e38, -3.3e38                    # mean 2.6e38: x - mean overflows
    y = np.arange(10.0)
    assert not np.isfinite(np.float32(-3.3e38) - np.float32(2.64e38))
    with pytest.raises(ValueError, match=r"x: values up to 5.9.e\+38 from their mean \(channel 1\)"
                                         r" overflow float32 once centred"):
        Scaler.fit(x, y)
    with pytest.raises(ValueError, match="y: values up to .* overflow float32 once centred"):
        Scaler.fit(np.ones((4, 1), np.float32), np.array([0.0, 0.0, 0.0, 1e38]))
    sc = Scaler.fit(np.c_[x[:, 0], np.linspace(-1e37, 1e37, 10)], y)   # fits: finite output
    assert np.isfinite(sc.transform_x(np.c_[x[:, 0], np.linspace(-1e37, 1e37, 10)])).all()


def test_float64_signals_that_float32_would_merge_are_refused_per_lead(tmp_path):
    """The tabular npz check now covers signals [n, time, leads]: lead 0 at 1e9 +- 1000
    rounds in steps of 64 (a twentieth of its sd) and was silently scaled."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 50, 3))
    x[:, :, 1] = 1e9 + 1000.0 * x[:, :, 1]
    np.savez(tmp_path / "s.npz", x=x, y=np.arange(6.0))
    with pytest.raises(ValueError, match=r"array 'x\[:, :, 1\]': float32, .* rounds its values "
                                         r"by up to 3\d\.?\d*, 0\.0\d+ of their spread"):
        load(f"npz:{tmp_path / 's.npz'}")
    x[:, :, 1] = 4.2                                      # constant, and small offsets: fine
    x[:, :, 2] += 1e3
    np.savez(tmp_path / "ok.npz", x=x, y=np.arange(6.0))
    np.testing.assert_array_equal(np.asarray(load(f"npz:{tmp_path / 'ok.npz'}").x), x)
    # prediction inputs are not checked (the model saw the same rounding in training)
    load(f"npz:{tmp_path / 's.npz'}", labels_optional=True)


def test_a_wfdb_record_listed_twice_is_refused_for_training(tmp_path):
    import wfdb
    from hypuc_jax.data import LEAD_NAMES
    rng = np.random.default_rng(1)
    for k in range(3):
        wfdb.wrsamp(f"r{k}", fs=100, units=["mV"] * 12, sig_name=list(LEAD_NAMES),
                    p_signal=rng.normal(size=(200, 12)) * 0.3, fmt=["16"] * 12,
                    adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(tmp_path))
    write_csv(tmp_path / "labels.csv", ["record", "K"],
              [["r0", 4.0], ["r1", 5.0], ["r2", 6.0], ["./r0", 7.0]])
    with pytest.raises(ValueError, match=r"labels.csv: record './r0' is listed twice \(rows 0 "
                                         r"and 3\); expected one row per record"):
        load(f"wfdb:{tmp_path}")
    ds = load(f"wfdb:{tmp_path}", labels_optional=True)      # prediction: one row per line
    assert ds.x.shape[0] == 4
    np.testing.assert_array_equal(ds.x[3], ds.x[0])


def test_library_inputs_are_checked_where_they_enter(tmp_path):
    from hypuc_jax.data import batch_iterator
    x, y = np.zeros((8, 3), np.float32), np.arange(8.0)
    with pytest.raises(ValueError, match=r"x: expected \[n, ..., channels\].*got shape \(8,\)"):
        Scaler.fit(np.arange(8.0), y)
    for bad, what in ((lambda v: -np.ones_like(v), "range"), (lambda v: np.ones(2), "shape (2,)"),
                      (lambda v: np.full_like(v, np.nan), "range")):
        with pytest.raises(ValueError, match=rf"weight_fn: expected finite weights >= 0 .*{what}"
                                             .replace("(", r"\(").replace(")", r"\)")):
            next(batch_iterator(x, y, batch_size=4, weight_fn=bad))
    w = next(batch_iterator(x, y, batch_size=4, train=False, weight_fn=lambda v: v + 1.0))["w"]
    np.testing.assert_array_equal(w, [1.0, 2.0, 3.0, 4.0])
    # npz split arrays: bytes are decoded; an object array (pickled) gets the fix named
    np.savez(tmp_path / "b.npz", x=np.ones((3, 2)), y=np.arange(3.0),
             split=np.array([b"train", b"VAL", b"test"]))
    assert list(load(f"npz:{tmp_path / 'b.npz'}").split) == ["train", "val", "test"]
    np.savez(tmp_path / "o.npz", x=np.ones((3, 2)), y=np.arange(3.0),
             split=np.array(["train", "val", "test"], dtype=object))
    with pytest.raises(ValueError, match=r"array 'split' holds Python objects; expected strings "
                                         r"train / val / test \(e.g. save split.astype\(str\)\)"):
        load(f"npz:{tmp_path / 'o.npz'}")


def test_whitespace_only_lines_are_skipped_like_empty_ones(tmp_path):
    (tmp_path / "t.csv").write_text("a,y\n1,2\n   \n\n3,4\n\t\n")
    ds = load(f"csv:{tmp_path / 't.csv'}?target=y")
    np.testing.assert_array_equal(ds.x[:, 0], [1.0, 3.0])
    np.testing.assert_array_equal(ds.y, [2.0, 4.0])


def test_signal_precision_check_uses_the_finite_values_and_float32_constancy(tmp_path):
    """One NaN in a lead made its mean/sd NaN and switched the check off; a column
    whose float64 values sit on a float32 rounding boundary (1e9 + 32 +- 2e-4) splits
    into two float32 values 64 apart and is refused, a truly constant one passes."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, 30, 2))
    x[:, :, 0] = 1e9 + 100.0 * x[:, :, 0]
    x[3, 5, 0] = np.nan
    np.savez(tmp_path / "n.npz", x=x, y=np.arange(20.0))
    with pytest.raises(ValueError, match=r"array 'x\[:, :, 0\]': float32"):
        load(f"npz:{tmp_path / 'n.npz'}")
    tab = np.c_[rng.normal(size=400), 1e9 + 32 + rng.normal(0, 2e-4, 400)]
    assert len(np.unique(tab[:, 1].astype(np.float32))) == 2
    np.savez(tmp_path / "t.npz", x=tab, y=np.arange(400.0))
    with pytest.raises(ValueError, match=r"array 'x\[:, 1\]': float32"):
        load(f"npz:{tmp_path / 't.npz'}")
    tab[:, 1] = 1e9 + 32                                    # constant: one float32 value
    np.savez(tmp_path / "c.npz", x=tab, y=np.arange(400.0))
    assert load(f"npz:{tmp_path / 'c.npz'}").x.shape == (400, 2)


def test_only_a_first_unnamed_column_is_taken_for_an_index(tmp_path):
    (tmp_path / "t.csv").write_text("a,y,\n1,1,9\n2,2,8\n3,3,7\n")   # trailing comma: a column
    ds = load(f"csv:{tmp_path / 't.csv'}?target=y")
    assert ds.feature_names == ("a", "")
    np.testing.assert_array_equal(ds.x[:, 1], [9.0, 8.0, 7.0])


def test_an_edited_record_outside_the_stamps_old_sample_is_caught(tmp_path, capsys):
    """The data stamp hashed 64 sampled records: an edited training cell elsewhere
    resumed the old network with a refitted scaler (predictions moved by up to 3.9).
    Small data are now hashed whole; older run directories keep their stamp format."""
    import json
    from cli_helpers import FAST, hypuc, one_line_error
    from hypuc_jax import train_data, workflow
    rng = np.random.default_rng(3)
    n = 300
    df = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n)})
    df["y"] = 4.0 + df["a"] + 0.1 * rng.normal(size=n)
    df.to_csv(tmp_path / "t.csv", index=False)
    wd = tmp_path / "run"
    argv = ["train", "--workdir", wd, "--data", f"csv:{tmp_path / 't.csv'}?target=y",
            "--epochs", "1", *FAST]
    assert hypuc(capsys, *argv)[0] == 0
    stamp_file = wd / "checkpoints" / "data_stamp.json"
    assert json.loads(stamp_file.read_text())["data_stamp"].startswith("v2:")
    sampled = np.unique(np.linspace(0, n - 1, train_data.STAMP_RECORDS).astype(int))
    row = next(i for i in range(n) if i not in sampled)
    df.loc[row, "b"] = 40.0
    df.to_csv(tmp_path / "t.csv", index=False)
    rc, _, err = hypuc(capsys, *argv)
    assert "trained on other data" in one_line_error(rc, err)
    # a run directory stamped before (the sample): still resumes on the same data
    df.loc[row, "b"] = 41.0
    df.to_csv(tmp_path / "t.csv", index=False)
    ds = load(f"csv:{tmp_path / 't.csv'}?target=y")
    parts = train_data.split_for(workflow.load_config(wd), ds)
    legacy = train_data.data_stamp(ds.x, np.asarray(ds.y, np.float64), parts, legacy=True)
    stamp_file.write_text(json.dumps({"data_stamp": legacy}))
    assert hypuc(capsys, *argv)[0] == 0                        # resumed, not refused
    assert json.loads(stamp_file.read_text())["data_stamp"] == legacy
