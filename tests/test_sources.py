"""Tests of hypuc_jax.data.load: spec parsing and every source, good and bad.

Files are written in tmp_path (CSV with the csv module, NPZ with numpy,
WFDB with wfdb.wrsamp); expected values come from what the test wrote or from
scikit-learn / scipy directly.
"""
import csv
import logging
import os

import numpy as np
import pytest
import wfdb
from scipy import signal as sps
from sklearn.datasets import load_diabetes

from csv_files import write_csv
from hypuc_jax.data import LEAD_NAMES, RowView, load, parse_spec, readers, simulate


def listing(directory):
    return sorted(os.listdir(directory))


# ---------------------------------------------------------------- spec parsing

def test_parse_spec_kinds_and_options():
    assert parse_spec("diabetes") == ("diabetes", "", {})
    assert parse_spec("simulated:lvef?n=5&rate=250") == ("simulated", "lvef", {"n": "5", "rate": "250"})
    assert parse_spec("csv:/a/b.csv?target=K&features=x,y") == (
        "csv", "/a/b.csv", {"target": "K", "features": "x,y"})


@pytest.mark.parametrize("spec,match", [
    ("", "spec"), ("parquet:x.parquet", "kind"), ("csv:", "csv:PATH"),
    ("simulated:potassium?n", "KEY=VALUE"), ("simulated?n=1&n=2", "twice"),
    ("simulated?colour=red", "unknown option 'colour'"), ("simulated?n=abc", "option n='abc'"),
    ("simulated:sodium", "preset"), ("diabetes?strict=maybe", "strict"),
    ("diabetes?cuts=5,1", "cuts"),
])
def test_bad_specs_raise(spec, match):
    with pytest.raises(ValueError, match=match):
        load(spec)


# ------------------------------------------------------------------ simulated

def test_simulated_matches_simulate_and_has_task():
    ds = load("simulated:potassium?n=6&rate=100&seed=3&duration=1")
    x, y = simulate(3, 6, rate=100, duration=1.0)
    np.testing.assert_array_equal(ds.x, x)
    np.testing.assert_array_equal(ds.y, y)
    assert ds.kind == "signal" and ds.rate == 100.0 and ds.feature_names == LEAD_NAMES
    assert ds.task.regions["severe_hyperkalemia"] == (6.5, np.inf)
    assert [t.name for t in ds.task.thresholds] == ["K>5.5", "K>6.5", "K<3.5"]
    lvef = load("simulated:lvef?n=4&duration=1")
    assert lvef.task.name == "lvef" and {t.direction for t in lvef.task.thresholds} == {"below"}


def test_simulated_data_too_large_for_memory_names_the_options():
    # 1.3 PiB of float32 records: beyond any address space, refused at allocation;
    # numpy's message named only the array shape
    with pytest.raises(ValueError, match=r"300 records of 10 s at 1e\+10 Hz x 12 leads do not "
                                         r"fit in memory; lower n, duration or rate"):
        load("simulated:potassium?n=300&rate=1e10")


# ------------------------------------------------------------------- diabetes

def test_diabetes_is_the_unscaled_sklearn_data_with_optional_task():
    ref = load_diabetes(scaled=False)
    ds = load("diabetes?above=250&cuts=100,200")
    np.testing.assert_allclose(ds.x, ref.data, rtol=1e-6)
    np.testing.assert_allclose(ds.y, ref.target)
    assert ds.kind == "tabular" and ds.rate is None and len(ds.feature_names) == 10
    assert ds.task.thresholds[0].value == 250 and ds.task.thresholds[0].direction == "above"
    assert ds.task.regions == {"<100": (-np.inf, 100.0), "100-200": (100.0, 200.0),
                               ">=200": (200.0, np.inf)}
    assert load("diabetes").task.regions == {}


# ------------------------------------------------------------------------ csv

def test_csv_default_features_skip_text_columns_and_split_column(tmp_path, caplog):
    rows = [[f"p{i}", i, 2.0 * i, ["train", "val", "test"][i % 3], 4.0 + 0.1 * i] for i in range(9)]
    path = write_csv(tmp_path / "d.csv", ["id", "a", "b", "fold", "K"], rows)
    with caplog.at_level(logging.WARNING):
        ds = load(f"csv:{path}?target=K&split=fold&task=potassium")
    assert "id" in caplog.text                                 # skipped text column is logged
    assert ds.feature_names == ("a", "b")
    np.testing.assert_allclose(ds.x, [[r[1], r[2]] for r in rows])
    np.testing.assert_allclose(ds.y, [r[4] for r in rows], rtol=1e-6)
    assert list(ds.split) == [r[3] for r in rows]
    assert "hyperkalemia" in ds.task.regions and ds.task.target == "K"
    chosen = load(f"csv:{path}?target=K&features=b")
    np.testing.assert_allclose(chosen.x[:, 0], [r[2] for r in rows])
    spaced = load(f"csv:{path}?target=K&features=b, a")      # stripped, as header names are
    assert spaced.feature_names == ("b", "a")
    np.testing.assert_allclose(spaced.x, [[r[2], r[1]] for r in rows])


def test_csv_nonfinite_rows_dropped_with_log_or_rejected_in_strict_mode(tmp_path, caplog):
    rows = [[1.0, 4.0], ["nan", 4.1], [3.0, ""], [4.0, "inf"], [5.0, 4.4]]
    path = write_csv(tmp_path / "n.csv", ["a", "K"], rows)
    with caplog.at_level(logging.WARNING):
        ds = load(f"csv:{path}?target=K")
    assert "dropped 3 of 5 rows" in caplog.text
    np.testing.assert_allclose(ds.x[:, 0], [1.0, 5.0])
    np.testing.assert_allclose(ds.y, [4.0, 4.4], rtol=1e-6)
    with pytest.raises(ValueError, match=r"n\.csv: 3 rows with NaN/inf.*strict"):
        load(f"csv:{path}?target=K&strict=1")
    with pytest.raises(ValueError, match="strict"):
        load(f"csv:{path}?target=K", strict=True)


@pytest.mark.parametrize("header,rows,spec_opts,match", [
    (["a", "K"], [[1, 2]], "target=Z", "target column 'Z' not found"),
    (["a", "K"], [[1, "high"]], "target=K", "target column 'K' is not numeric"),
    (["a", "b", "K"], [[1, "x", 2]], "target=K&features=a,b", "feature column 'b' is not numeric"),
    (["a", "K"], [[1, 2]], "target=K&features=q", r"feature columns \['q'\] not found"),
    (["a", "K", "s"], [[1, 2, "dev2"]], "target=K&split=s", "expected a split"),
    (["a", "K"], [[1, 2, 3]], "target=K", "has 3 fields"),
    (["a", "a"], [[1, 2]], "target=a", "duplicate"),
    (["id", "K"], [["x", 2]], "target=K", "no numeric feature columns"),
    (["a", "K"], [], "target=K", "at least one data row"),
    (["a", "K"], [[1, 2]], "features=a", "target=COLUMN"),
    (["a", "b", "K"], [[1, 2, 3]], "target=K&features=", "option features: expected comma"),
    (["a", "b", "K"], [[1, 2, 3]], "target=K&features=a,,b", "option features: expected comma"),
])
def test_csv_bad_input_names_file_and_problem(tmp_path, header, rows, spec_opts, match):
    path = write_csv(tmp_path / "bad.csv", header, rows)
    before = listing(tmp_path)
    with pytest.raises(ValueError, match=match) as err:
        load(f"csv:{path}?{spec_opts}")
    assert "bad.csv" in str(err.value) or "target=COLUMN" in match
    assert listing(tmp_path) == before                      # nothing written


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ValueError, match="nope.csv: CSV file not found"):
        load(f"csv:{tmp_path}/nope.csv?target=K")
    with pytest.raises(ValueError, match="nope.npz: npz file not found"):
        load(f"npz:{tmp_path}/nope.npz")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(ValueError, match="bin.csv: unreadable CSV"):
        load(f"csv:{tmp_path}/bin.csv?target=K")
    (tmp_path / "fake.npz").write_text("not a zip")
    with pytest.raises(ValueError, match=r"fake.npz: not an \.npz"):
        load(f"npz:{tmp_path}/fake.npz")
    with pytest.raises(ValueError, match="WFDB directory not found"):
        load(f"wfdb:{tmp_path}/nodir")


# ------------------------------------------------------------------------ npz

def test_npz_memory_maps_uncompressed_x(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 50, 3)).astype(np.float32)
    y = rng.normal(size=7).astype(np.float32)
    path = tmp_path / "s.npz"
    np.savez(path, x=x, y=y, split=np.array(["train"] * 5 + ["val", "test"]))
    ds = load(f"npz:{path}?rate=50&leads=3")
    assert isinstance(ds.x, np.memmap) and ds.kind == "signal" and ds.rate == 50.0
    np.testing.assert_array_equal(np.asarray(ds.x), x)
    np.testing.assert_array_equal(ds.y, y)
    assert list(ds.split) == ["train"] * 5 + ["val", "test"]
    tab = tmp_path / "t.npz"
    np.savez(tab, x=x[:, :, 0].astype(np.float64), y=y)
    ds2 = load(f"npz:{tab}")
    assert ds2.kind == "tabular" and ds2.rate is None
    np.testing.assert_array_equal(np.asarray(ds2.x), x[:, :, 0])


def test_npz_nonfinite_rows_dropped_without_materialising(tmp_path):
    x = np.arange(6 * 4 * 2, dtype=np.float32).reshape(6, 4, 2)
    x[2, 1, 0] = np.nan
    path = tmp_path / "n.npz"
    np.savez(path, x=x, y=np.arange(6, dtype=np.float32))
    ds = load(f"npz:{path}")
    assert isinstance(ds.x, RowView) and ds.x.shape == (5, 4, 2)
    np.testing.assert_array_equal(np.asarray(ds.x), x[[0, 1, 3, 4, 5]])
    np.testing.assert_array_equal(ds.x[np.array([3, 0])], x[[4, 0]])
    np.testing.assert_array_equal(ds.y, [0, 1, 3, 4, 5])


def test_npz_bad_input(tmp_path):
    x, y = np.zeros((4, 3), np.float32), np.zeros(4, np.float32)
    np.savez_compressed(tmp_path / "c.npz", x=x, y=y)
    with pytest.raises(ValueError, match=r"c.npz: 'x' is compressed.*mmap=0"):
        load(f"npz:{tmp_path}/c.npz")
    np.testing.assert_array_equal(load(f"npz:{tmp_path}/c.npz?mmap=0").x, x)
    np.savez(tmp_path / "m.npz", x=x, y=np.zeros(5))
    with pytest.raises(ValueError, match="m.npz: x and y: expected the same length, got 4 and 5"):
        load(f"npz:{tmp_path}/m.npz")
    np.savez(tmp_path / "k.npz", inputs=x, y=y)
    with pytest.raises(ValueError, match=r"k.npz: expected arrays 'x' and 'y'"):
        load(f"npz:{tmp_path}/k.npz")
    np.savez(tmp_path / "l.npz", x=np.zeros((4, 10, 2), np.float32), y=y)
    with pytest.raises(ValueError, match=r"l.npz: expected x of shape \[n, time, 12\]"):
        load(f"npz:{tmp_path}/l.npz?leads=12")
    np.savez(tmp_path / "t.npz", x=np.zeros((4, 3), np.float32), y=y)   # tabular
    with pytest.raises(ValueError, match=r"t.npz: option rate=100 is for signals x \[n, time, "
                       r"leads\], got tabular x of shape \(4, 3\)"):
        load(f"npz:{tmp_path}/t.npz?rate=100")           # it was ignored without a word
    np.savez(tmp_path / "d.npz", x=np.zeros(4), y=y)
    with pytest.raises(ValueError, match="d.npz: expected numeric x of shape"):
        load(f"npz:{tmp_path}/d.npz")


# ----------------------------------------------------------------------- wfdb

FS = 200


def _write_records(directory, signals, names=None, units="mV", gain=1000.0):
    """Writes records r0, r1, ... with leads in a shuffled order."""
    order = [3, 0, 11, 1, 5, 2, 7, 4, 6, 10, 8, 9]
    lead_names = [LEAD_NAMES[i] for i in order] if names is None else names
    for k, sig in enumerate(signals):
        data = sig[:, order] if names is None else sig
        wfdb.wrsamp(f"r{k}", fs=FS, units=[units] * data.shape[1], sig_name=lead_names,
                    p_signal=data.astype(np.float64), fmt=["16"] * data.shape[1],
                    adc_gain=[gain] * data.shape[1], baseline=[0] * data.shape[1],
                    write_dir=str(directory))


def test_wfdb_records_resampled_and_reordered(tmp_path):
    t = np.arange(2 * FS) / FS
    sigs = [np.stack([np.sin(2 * np.pi * (1 + j + k) * t) * 0.5 for j in range(12)], axis=1)
            for k in range(3)]
    _write_records(tmp_path, sigs)
    write_csv(tmp_path / "labels.csv", ["record", "K"], [[f"r{k}", 4.0 + k] for k in range(3)])
    before = listing(tmp_path)
    ds = load(f"wfdb:{tmp_path}?rate=100&task=potassium")
    assert listing(tmp_path) == before
    assert ds.x.shape == (3, 200, 12) and ds.kind == "signal" and ds.rate == 100.0
    assert ds.feature_names == LEAD_NAMES and ds.task.target == "K"
    np.testing.assert_allclose(ds.y, [4.0, 5.0, 6.0])
    for k in range(3):  # reference: scipy's polyphase resampling of what was written
        ref = sps.resample_poly(np.round(sigs[k] * 1000) / 1000, 1, 2, axis=0)
        np.testing.assert_allclose(ds.x[k], ref, atol=1e-4)
    cut = load(f"wfdb:{tmp_path}?rate=100&duration=1.5&target=K")
    assert cut.x.shape == (3, 150, 12)


def test_wfdb_rates_in_whole_hz_are_resampled_exactly(tmp_path):
    """1001 Hz -> 100 Hz: the ratio 100/1001 was cut to a denominator of at most
    1000 (1/10), so every record came out at 100.1 Hz, 0.1% off, without a word."""
    fs = 1001
    t = np.arange(2 * fs) / fs
    sig = np.stack([np.sin(2 * np.pi * (1 + j) * t) * 0.5 for j in range(12)], axis=1)
    wfdb.wrsamp("r0", fs=fs, units=["mV"] * 12, sig_name=list(LEAD_NAMES), p_signal=sig,
                fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12,
                write_dir=str(tmp_path))
    write_csv(tmp_path / "labels.csv", ["record", "K"], [["r0", 4.0]])
    ds = load(f"wfdb:{tmp_path}?rate=100")
    ref = sps.resample_poly(np.round(sig * 1000) / 1000, 100, 1001, axis=0)   # exact ratio
    assert ds.x.shape == (1, 200, 12) and ref.shape == (200, 12)
    np.testing.assert_allclose(ds.x[0], ref, atol=1e-4)


def test_wfdb_microvolts_converted_and_split_column(tmp_path):
    sig = np.ones((FS, 12)) * 500.0
    _write_records(tmp_path, [sig, sig], units="uV", gain=1.0)
    write_csv(tmp_path / "lab.csv", ["name", "fold", "EF"], [["r0", "train", 55], ["r1", "test", 30]])
    ds = load(f"wfdb:{tmp_path}?labels={tmp_path}/lab.csv&record=name&target=EF&split=fold&rate=200")
    np.testing.assert_allclose(ds.x, 0.5, atol=1e-3)
    assert list(ds.split) == ["train", "test"]


def test_wfdb_bad_input(tmp_path):
    sig = np.zeros((FS, 12))
    _write_records(tmp_path, [sig])
    write_csv(tmp_path / "labels.csv", ["record", "K"], [["r0", 4.0], ["r9", 5.0]])
    with pytest.raises(ValueError, match=r"r9: WFDB header .*r9\.hea not found"):
        load(f"wfdb:{tmp_path}")
    write_csv(tmp_path / "labels.csv", ["record", "K", "Na"], [["r0", 4.0, 140]])
    with pytest.raises(ValueError, match="labels.csv: cannot tell the target column"):
        load(f"wfdb:{tmp_path}")
    wfdb.wrsamp("short", fs=FS, units=["mV"] * 3, sig_name=["I", "II", "III"],
                p_signal=np.zeros((FS, 3)), fmt=["16"] * 3, write_dir=str(tmp_path))
    write_csv(tmp_path / "labels.csv", ["record", "K"], [["short", 4.0]])
    with pytest.raises(ValueError, match=r"short: expected the 12 standard leads.*got 3 signals"):
        load(f"wfdb:{tmp_path}")
    write_csv(tmp_path / "labels.csv", ["record", "K"], [["r0", 4.0]])
    with pytest.raises(ValueError, match=r"r0: expected at least 400 samples at 100 Hz, got 100"):
        load(f"wfdb:{tmp_path}?duration=4")
    (tmp_path / "r0.hea").write_text("garbage header\n")
    with pytest.raises(ValueError, match="r0: unreadable WFDB record"):
        load(f"wfdb:{tmp_path}")


# ---------------------------------------------------------------------------- prediction inputs

def test_labels_optional_loads_unlabelled_csv_and_npz(tmp_path):
    """For prediction: no label column / array gives NaN labels, no row is dropped,
    and a row with NaN inputs is an error naming it."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, 2)).astype(np.float32)
    path = tmp_path / "u.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["p", "q"])
        w.writerows(x.tolist())
    ds = load(f"csv:{path}", labels_optional=True, defaults={"target": "K"})   # the run's
    np.testing.assert_array_equal(ds.x, x)
    assert np.isnan(ds.y).all() and ds.y.shape == (6,)
    with pytest.raises(ValueError, match="target column 'K' not found"):
        load(f"csv:{path}?target=K")
    with pytest.raises(ValueError, match="target column 'K' not found"):   # named: must exist
        load(f"csv:{path}?target=K", labels_optional=True)
    np.savez(tmp_path / "u.npz", x=x)
    ds = load(f"npz:{tmp_path / 'u.npz'}", labels_optional=True)
    np.testing.assert_array_equal(np.asarray(ds.x), x)
    assert np.isnan(ds.y).all()
    with pytest.raises(ValueError, match="expected arrays 'x' and 'y'"):
        load(f"npz:{tmp_path / 'u.npz'}")
    np.savez(tmp_path / "upper.npz", X=x)          # prediction input: only x is asked for
    with pytest.raises(ValueError, match=r"upper.npz: expected array 'x', found \['X'\]$"):
        load(f"npz:{tmp_path / 'upper.npz'}", labels_optional=True)
    x[3, 1] = np.nan
    np.savez(tmp_path / "bad.npz", x=x, y=np.zeros(6))
    with pytest.raises(ValueError, match=r"1 rows with NaN/inf in the inputs \(first: row 3\)"):
        load(f"npz:{tmp_path / 'bad.npz'}", labels_optional=True)
    assert len(load(f"npz:{tmp_path / 'bad.npz'}")) == 5          # training drops it


def test_defaults_fill_only_what_the_spec_leaves_open(tmp_path):
    path = tmp_path / "t.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b,c", "y", "z"])                    # a column name with a comma
        w.writerows([[1, 2, 3, 4], [5, 6, 7, 8]])
    ds = load(f"csv:{path}", defaults={"target": "y", "features": ("b,c", "a")})
    np.testing.assert_array_equal(ds.x, [[2, 1], [6, 5]])
    assert ds.feature_names == ("b,c", "a")
    np.testing.assert_array_equal(ds.y, [3, 7])
    ds = load(f"csv:{path}?target=z", defaults={"target": "y", "features": ("a",)})
    np.testing.assert_array_equal(ds.y, [4, 8])
    ds = load("simulated:potassium?n=4", defaults={"target": "y", "features": ("a",)})
    assert len(ds) == 4                                       # options it has no use for


def test_config_target_must_apply_and_agree(tmp_path):
    from hypuc_jax.config import apply_overrides, get_config
    from hypuc_jax.data import load_for_config

    path = tmp_path / "t.csv"
    path.write_text("a,y,z\n1,2,3\n4,5,6\n")
    cfg = apply_overrides(get_config("tiny"), [f"data.spec=csv:{path}", "data.target=z"])
    np.testing.assert_array_equal(load_for_config(cfg).y, [3, 6])
    cfg = apply_overrides(cfg, [f"data.spec=csv:{path}?target=y"])
    with pytest.raises(ValueError, match="data.target.*'z' conflicts with the spec's target='y'"):
        load_for_config(cfg)
    cfg = apply_overrides(get_config("tiny"), ["data.target=K"])
    with pytest.raises(ValueError, match="data.target.*csv and wfdb data only"):
        load_for_config(cfg)


def test_wfdb_labels_optional(tmp_path):
    sig = np.ones((FS, 12)) * 0.25
    _write_records(tmp_path, [sig, sig])
    write_csv(tmp_path / "records.csv", ["record"], [["r0"], ["r1"]])        # no label column
    spec = f"wfdb:{tmp_path}?labels={tmp_path}/records.csv&rate=100"
    ds = load(spec, labels_optional=True)
    assert ds.x.shape == (2, 100, 12) and np.isnan(ds.y).all()
    with pytest.raises(ValueError, match="cannot tell the target column"):
        load(spec)
    ds = load(spec, labels_optional=True, defaults={"target": "K"})           # the run's, absent
    assert np.isnan(ds.y).all()
    with pytest.raises(ValueError, match="target column 'K' not found"):      # named, absent
        load(spec + "&target=K", labels_optional=True)


def test_an_unknown_numeric_split_value_is_shown_plainly():
    # an npz split array of ints: the value as written, not numpy's repr
    with pytest.raises(ValueError, match=r"^f\.npz: row 0: expected a split in .*, got 2$"):
        readers.normalise_split(np.array([2, 0]), "f.npz")
