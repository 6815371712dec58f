"""Tests of hypuc_jax.data.pipeline: splits, Scaler, batches, prefetch.

References are numpy computations written here (means/stds over the
training rows, set algebra on indices, hand-computed part sizes).
"""
import json
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hypuc_jax.data import Scaler, batch_iterator, prefetch_to_device, split_indices
from hypuc_jax.data import pipeline
from hypuc_jax.data import scaler as scaler_module


# --------------------------------------------------------------------- splits

@pytest.mark.parametrize("n,fractions,sizes", [
    (100, (0.6, 0.2, 0.2), (60, 20, 20)), (7, (0.6, 0.2, 0.2), (4, 1, 2)),
    (10, (0.8, 0.1, 0.1), (8, 1, 1)), (5, (1 / 3, 1 / 3, 1 / 3), (2, 2, 1)),
])
def test_split_sizes_partition_and_determinism(n, fractions, sizes):
    parts = split_indices(n, 3, fractions)
    assert tuple(len(parts[s]) for s in ("train", "val", "test")) == sizes
    together = np.concatenate(list(parts.values()))
    np.testing.assert_array_equal(np.sort(together), np.arange(n))    # disjoint, covering
    again = split_indices(n, 3, fractions)
    for s in parts:
        np.testing.assert_array_equal(parts[s], again[s])
        assert parts[s].dtype == np.int64


def test_split_depends_on_seed_and_fixed_split_overrides():
    a, b = split_indices(50, 0), split_indices(50, 1)
    assert not np.array_equal(a["train"], b["train"])
    fixed = np.array(["train", "val", "test", "Validation", "train"])
    parts = split_indices(5, 0, fixed=fixed)
    assert parts["train"].tolist() == [0, 4] and parts["val"].tolist() == [1, 3]
    assert parts["test"].tolist() == [2]


@pytest.mark.parametrize("kwargs,match", [
    (dict(n=3), "leaves 'test' empty"), (dict(n=10, fractions=(1.0, 0.0, 0.0)), "leaves 'val' empty"),
    (dict(n=10, fractions=(0.5, 0.5)), "fractions"), (dict(n=10, fractions=(0.7, 0.2, 0.2)), "fractions"),
    (dict(n=0), "n:"), (dict(n=10, seed=-1), "seed:"),
    (dict(n=3, fixed=["train", "train", "test"]), "leaves 'val' empty"),
    (dict(n=3, fixed=["train", "val"]), "fixed: expected 3"),
    (dict(n=2, fixed=["train", "holdout"]), "expected a split"),
])
def test_split_bad_input(kwargs, match):
    args = dict(seed=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        split_indices(**args)


# --------------------------------------------------------------------- scaler

def test_scaler_fits_train_rows_only_per_lead_and_round_trips(monkeypatch):
    monkeypatch.setattr(scaler_module, "_BLOCK", 3)     # exercise the blockwise (Chan) merge
    rng = np.random.default_rng(0)
    x = rng.normal(loc=[1.0, -2.0, 5.0], scale=[0.5, 2.0, 3.0], size=(20, 30, 3)).astype(np.float32)
    y = rng.gamma(2.0, 2.0, size=20)
    train = np.array([0, 3, 4, 7, 8, 9, 15, 19])
    sc = Scaler.fit(x, y, train)
    np.testing.assert_allclose(sc.x_mean, x[train].mean(axis=(0, 1)), rtol=1e-5)
    np.testing.assert_allclose(sc.x_std, x[train].std(axis=(0, 1)), rtol=1e-5)
    assert sc.y_mean == pytest.approx(y[train].mean()) and sc.y_std == pytest.approx(y[train].std())
    xt = sc.transform_x(x)
    assert xt.dtype == np.float32
    np.testing.assert_allclose(xt, (x - x[train].mean(axis=(0, 1))) / x[train].std(axis=(0, 1)),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sc.inverse_y(sc.transform_y(y)), y, rtol=1e-12)
    assert sc.inverse_scale(2.0) == pytest.approx(2.0 * y[train].std())
    back = Scaler.from_dict(json.loads(json.dumps(sc.to_dict())))
    np.testing.assert_array_equal(back.x_mean, sc.x_mean)
    assert back.y_std == sc.y_std
    jx = sc.transform_x(jnp.asarray(x))
    assert isinstance(jx, jax.Array)
    np.testing.assert_allclose(np.asarray(jx), xt, rtol=1e-6)


def test_scaler_scales_columns_in_tiny_units_and_keeps_constants_at_one():
    """A predictive feature in units of 1e-14 and labels in units of 1e-13 were
    taken for constants (an absolute 1e-12 cut) and left unscaled: the model
    then ignored the feature (test MAE 1.11 vs 0.13). Reference: numpy's std."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(200, 1))
    x = np.concatenate([1e-14 * z, np.full((200, 1), 0.1), np.zeros((200, 1)),
                        rng.normal(size=(200, 1))], axis=1).astype(np.float32)
    y = 1e-13 * z[:, 0]
    sc = Scaler.fit(x, y)
    np.testing.assert_allclose(sc.x_std, [np.std(x[:, 0].astype(np.float64)), 1.0, 1.0,
                                          np.std(x[:, 3].astype(np.float64))], rtol=1e-6)
    assert sc.y_std == pytest.approx(np.std(y), rel=1e-12)
    np.testing.assert_allclose(np.std(sc.transform_x(x)[:, 0]), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.std(sc.transform_y(y)), 1.0, rtol=1e-9)
    assert Scaler.fit(x, np.full(200, 3.7)).y_std == 1.0       # constant labels: no scaling
    sub = np.zeros((300, 1), np.float32)
    sub[-1] = 1e-45                   # a float32 subnormal: its sd rounds to 0 in float32
    assert Scaler.fit(sub, np.arange(300.0)).x_std.tolist() == [1.0]


def test_scaler_tabular_constant_feature_and_bad_input():
    x = np.array([[1.0, 7.0], [3.0, 7.0], [5.0, 7.0]])
    sc = Scaler.fit(x, np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(sc.x_mean, [3.0, 7.0])
    np.testing.assert_allclose(sc.x_std, [np.std([1, 3, 5]), 1.0])
    with pytest.raises(ValueError, match="x: expected finite"):
        Scaler.fit(np.array([[np.nan], [1.0]]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="x and y: expected the same length"):
        Scaler.fit(x, np.ones(2))
    with pytest.raises(ValueError, match="x: expected 2 channels"):
        sc.transform_x(np.ones((4, 3)))
    with pytest.raises(ValueError, match="lacks keys"):
        Scaler.from_dict({"x_mean": [0.0]})


# -------------------------------------------------------------------- batches

def _data(n=11, t=6, leads=2):
    x = np.arange(n * t * leads, dtype=np.float32).reshape(n, t, leads)
    y = np.linspace(3.0, 7.0, n).astype(np.float32)
    return x, y


def test_train_batches_fixed_shape_shuffled_per_epoch_remainder_dropped():
    x, y = _data()
    idx = np.arange(1, 11)                                   # 10 rows, batch 4 -> 2 per epoch
    epochs = [list(batch_iterator(x, y, idx, 4, seed=5, epoch=e)) for e in range(3)]
    for batches in epochs:
        assert len(batches) == 2
        rows = np.concatenate([b["y"] for b in batches])
        assert len(set(rows.tolist())) == 8 and set(rows.tolist()) <= set(y[idx].tolist())
        for b in batches:
            assert b["x"].shape == (4, 6, 2) and b["x"].dtype == np.float32
            assert b["mask"].tolist() == [1.0] * 4 and b["w"].tolist() == [1.0] * 4
            for xi, yi in zip(b["x"], b["y"]):               # x rows travel with their y
                np.testing.assert_array_equal(xi, x[np.flatnonzero(y == yi)[0]])
    orders = [np.concatenate([b["y"] for b in batches]) for batches in epochs]
    assert not np.array_equal(orders[0], orders[1])          # reshuffled each epoch
    again = list(batch_iterator(x, y, idx, 4, seed=5, epoch=1))
    for a, b in zip(again, epochs[1]):
        np.testing.assert_array_equal(a["x"], b["x"])
    two = list(batch_iterator(x, y, idx, 4, seed=5, epoch=0, num_epochs=2))
    np.testing.assert_array_equal(two[2]["y"], epochs[1][0]["y"])


class _CountingRows:
    """x that counts the rows read (a memory map's reads, as far as the iterator goes)."""

    def __init__(self, x):
        self.x, self.rows = x, 0
        self.shape, self.dtype = x.shape, x.dtype

    def __getitem__(self, index):
        out = self.x[index]
        self.rows += len(out)
        return out


def test_a_resumed_epoch_skips_its_first_batches_without_reading_them():
    x, y = _data()
    idx = np.arange(1, 11)
    full = list(batch_iterator(x, y, idx, 2, seed=5, epoch=0, num_epochs=2))   # 5 per epoch
    counting = _CountingRows(x)
    resumed = list(batch_iterator(counting, y, idx, 2, seed=5, epoch=0, num_epochs=2,
                                  start_batch=3))
    assert len(resumed) == len(full) - 3
    for a, b in zip(resumed, full[3:]):
        np.testing.assert_array_equal(a["x"], b["x"])
        np.testing.assert_array_equal(a["y"], b["y"])
    assert counting.rows == 2 * len(resumed)      # skipping used to build every skipped batch
    with pytest.raises(ValueError, match="start_batch"):
        batch_iterator(x, y, idx, 2, start_batch=-1)


def test_scaler_on_long_records_reads_small_blocks_and_matches_numpy(monkeypatch):
    # Blocks were 2048 rows whatever the record length: two float64 copies of
    # 2048 x 5000 x 12 values (~2 GB) for a 500 Hz, 10 s ECG.
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(40, 3000, 3)) * [1e-3, 1.0, 1e2] + [1e4, 0.0, -5.0]).astype(np.float32)
    y = rng.normal(size=40)
    assert scaler_module.row_block(x, 2048, itemsize=8, max_bytes=2 ** 20) == 14   # 72 kB a row
    small = scaler_module.row_block
    monkeypatch.setattr(scaler_module, "row_block",
                        lambda x, m, itemsize, max_bytes: small(x, m, itemsize=itemsize,
                                                                max_bytes=2 ** 20))
    reads = []

    class Rows(_CountingRows):
        def __getitem__(self, index):
            out = super().__getitem__(index)
            reads.append(len(out))
            return out

    sc = Scaler.fit(Rows(x), y, np.arange(40))
    assert reads == [14, 14, 12]
    flat = x.astype(np.float64).reshape(-1, 3)
    np.testing.assert_allclose(sc.x_mean, flat.mean(axis=0), rtol=1e-7)
    np.testing.assert_allclose(sc.x_std, flat.std(axis=0), rtol=1e-6)


def test_eval_batches_cover_in_order_with_padding_mask_weights_and_scaler():
    x, y = _data()
    sc = Scaler.fit(x, y, np.arange(8))
    idx = np.array([9, 2, 4, 0, 7])
    batches = list(batch_iterator(x, y, idx, 2, train=False, scaler=sc,
                                  weight_fn=lambda v: 10.0 * v))
    assert len(batches) == 3 and all(b["x"].shape == (2, 6, 2) for b in batches)
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.tolist() == [1, 1, 1, 1, 1, 0]
    got_y = np.concatenate([b["y"] for b in batches])[:5]
    # rows in the order of idx, also inside a batch: (9, 2), (4, 0), (7)
    order = idx
    np.testing.assert_allclose(got_y, (y[order] - sc.y_mean) / sc.y_std, rtol=1e-5)
    np.testing.assert_allclose(np.concatenate([b["w"] for b in batches])[:5], 10 * y[order], rtol=1e-6)
    got_x = np.concatenate([b["x"] for b in batches])[:5]
    np.testing.assert_allclose(got_x, (x[order] - sc.x_mean) / sc.x_std, rtol=1e-5)
    last = batches[-1]
    assert last["w"][1] == 0 and last["y"][1] == 0 and not last["x"][1].any()


def test_jitted_weight_fn_works_under_a_disallowing_transfer_guard():
    x, y = _data()
    weight = jax.jit(lambda v: 2.0 * v)
    with jax.transfer_guard("disallow"):
        batch = next(batch_iterator(x, y, None, 4, train=False, weight_fn=weight))
    np.testing.assert_allclose(batch["w"], 2.0 * y[:4], rtol=1e-6)


def test_process_slices_reassemble_the_global_batch():
    x, y = _data(n=13)
    for train, resample in ((True, False), (True, True), (False, False)):
        kw = dict(train=train, seed=2, resample=resample, weight_fn=lambda v: v ** 2)
        full = list(batch_iterator(x, y, None, 4, process_count=1, process_index=0, **kw))
        parts = [list(batch_iterator(x, y, None, 4, process_count=2, process_index=p, **kw))
                 for p in range(2)]
        assert len(parts[0]) == len(parts[1]) == len(full)     # same step count everywhere
        for g, a, b in zip(full, *parts):
            assert a["x"].shape == (2, 6, 2)
            got = np.concatenate([a["y"][a["mask"] > 0], b["y"][b["mask"] > 0]])
            np.testing.assert_array_equal(np.sort(got), np.sort(g["y"][g["mask"] > 0]))


def test_memory_mapped_x_is_read_by_rows(tmp_path):
    x, y = _data(n=9)
    path = tmp_path / "x.npy"
    np.save(path, x)
    xm = np.load(path, mmap_mode="r")
    a = list(batch_iterator(xm, y, None, 3, seed=1))
    b = list(batch_iterator(x, y, None, 3, seed=1))
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u["x"], v["x"])


def test_step_traces_once_over_train_and_eval_batches():
    x, y = _data(n=10)
    traces = []

    @jax.jit
    def step(batch):
        traces.append(1)
        return jnp.sum(batch["x"].mean(axis=(1, 2)) * batch["w"] * batch["mask"])

    for batch in batch_iterator(x, y, None, 4, num_epochs=2):
        step(batch)
    for batch in batch_iterator(x, y, None, 4, train=False):
        step(batch)
    assert len(traces) == 1


def test_resample_draws_rows_in_proportion_to_their_weights_with_unit_loss_weights():
    x, y = _data()
    idx = np.arange(1, 11)
    weight = lambda v: (v - 2.0) ** 3                        # 1 .. 125: strongly skewed
    p = weight(y[idx]) / weight(y[idx]).sum()                # closed form of the draw
    epochs = 3000
    counts = np.zeros(len(y))
    for b in batch_iterator(x, y, idx, 5, seed=3, num_epochs=epochs, weight_fn=weight,
                            resample=True):
        assert b["w"].tolist() == [1.0] * 5 and b["mask"].tolist() == [1.0] * 5
        for xi, yi in zip(b["x"], b["y"]):                   # x rows travel with their y
            np.testing.assert_array_equal(xi, x[np.flatnonzero(y == yi)[0]])
        np.add.at(counts, [np.flatnonzero(y == v)[0] for v in b["y"]], 1)
    n = epochs * 10                                          # 10 draws per epoch, 2 batches of 5
    assert counts.sum() == n and counts[0] == 0              # only rows of idx are drawn
    se = np.sqrt(p * (1 - p) / n)
    np.testing.assert_array_less(np.abs(counts[idx] / n - p), 5 * se)
    again = list(batch_iterator(x, y, idx, 5, seed=3, epoch=7, num_epochs=1, weight_fn=weight,
                                resample=True))
    ref = list(batch_iterator(x, y, idx, 5, seed=3, num_epochs=8, weight_fn=weight,
                              resample=True))[14:]
    for a, b in zip(again, ref):                             # epoch e is a function of (seed, e)
        np.testing.assert_array_equal(a["y"], b["y"])


@pytest.mark.parametrize("kwargs,match", [
    (dict(train=False, weight_fn=lambda v: v), "resample: needs train=True"),
    (dict(weight_fn=None), "resample: needs train=True and a weight_fn"),
    (dict(weight_fn=lambda v: v - 5.0), "weight_fn: expected finite weights >= 0"),
    (dict(weight_fn=lambda v: np.full_like(v, np.nan)), "weight_fn: expected finite"),
    (dict(weight_fn=lambda v: v[:2]), "one per label"),
])
def test_resample_bad_input(kwargs, match):
    x, y = _data()
    with pytest.raises(ValueError, match=match):
        batch_iterator(x, y, None, 4, resample=True, **kwargs)
    with pytest.raises(ValueError, match="resample: expected a bool, got 'yes'"):
        batch_iterator(x, y, None, 4, resample="yes", weight_fn=lambda v: v)


@pytest.mark.parametrize("kwargs,match", [
    (dict(batch_size=3, process_count=2, process_index=0), "multiple of process_count"),
    (dict(batch_size=20), "at least batch_size=20 rows"),
    (dict(indices=np.array([0, 11])), "indices: expected values in"),
    (dict(process_count=2, process_index=2, batch_size=4), "process_index"),
    (dict(batch_size=0), "batch_size"), (dict(num_epochs=0), "num_epochs"),
])
def test_batch_iterator_bad_input(kwargs, match):
    x, y = _data()
    args = dict(batch_size=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        batch_iterator(x, y, **args)
    with pytest.raises(ValueError, match="x and y"):
        batch_iterator(x, y[:3], batch_size=2)


# ------------------------------------------------------------------- prefetch

def test_prefetch_puts_batches_on_device_with_sharding():
    x, y = _data(n=16)
    n_dev = jax.device_count()
    mesh = jax.make_mesh((n_dev,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    host = list(batch_iterator(x, y, None, 8, train=False))
    dev = list(prefetch_to_device(batch_iterator(x, y, None, 8, train=False), 2, shard))
    assert len(dev) == len(host)
    for h, d in zip(host, dev):
        assert isinstance(d["x"], jax.Array) and d["x"].sharding == shard
        assert len(d["x"].sharding.device_set) == n_dev
        np.testing.assert_array_equal(np.asarray(d["x"]), h["x"])
    plain = next(iter(prefetch_to_device(iter(host), size=1)))
    assert isinstance(plain["y"], jax.Array)


def test_prefetch_reraises_errors_and_stops_its_thread():
    def broken():
        yield {"a": np.zeros(2)}
        raise RuntimeError("disk gone")

    it = prefetch_to_device(broken())
    next(it)
    with pytest.raises(RuntimeError, match="disk gone"):
        next(it)

    def endless():
        while True:
            yield {"a": np.zeros(2)}

    gen = prefetch_to_device(endless(), size=2)
    next(gen)
    gen.close()
    assert not any(t.name == "prefetch_to_device" and t.is_alive() for t in threading.enumerate())
    with pytest.raises(ValueError, match="size"):
        prefetch_to_device(iter([]), size=0)
    with pytest.raises(ValueError, match="sharding"):
        prefetch_to_device(iter([]), sharding="data")
