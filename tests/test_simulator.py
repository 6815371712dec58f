"""Tests of hypuc_jax.data.simulator and the preset label distributions.

The ECG relations are measured from the generated signals with an
independent numpy/scipy beat analysis (R-peak detection, median beat,
windowed amplitudes), not with the simulator's internal parameters.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal as sps
from scipy import stats
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score

from hypuc_jax.data import PRESETS, effective_labels, simulate
from hypuc_jax.data import simulator as sim

II, V3 = 1, 8


def median_beat(x, rate):
    """Median beat [-0.3 s, 0.7 s] around detected R peaks, and median RR (s).

    R peaks: 15-40 Hz band-pass (passes the QRS, not even a peaked T),
    energy summed over leads, peaks at least 0.35 s apart.

    Args:
      x: [time, 12] one record.
    """
    b, a = sps.butter(2, [15.0, 40.0], btype="bandpass", fs=rate)
    energy = np.square(sps.filtfilt(b, a, x, axis=0)).sum(axis=1)
    peaks, _ = sps.find_peaks(energy, distance=int(0.35 * rate),
                              height=0.5 * np.percentile(energy, 99.5))
    # refine each fiducial to the largest spatial magnitude within +-60 ms (R)
    mag, half = np.abs(x).sum(axis=1), int(0.06 * rate)
    peaks = np.array([p - half + np.argmax(mag[max(p - half, 0):p + half + 1])
                      if p >= half else p for p in peaks])
    lo, hi = int(0.3 * rate), int(0.7 * rate)
    rr = float(np.median(np.diff(peaks))) / rate
    peaks = peaks[(peaks > lo) & (peaks < len(x) - hi)]
    beats = np.stack([x[p - lo:p + hi] for p in peaks])
    return np.median(beats, axis=0), rr


def beat_features(x, rate):
    """Amplitudes (mV) and durations (s) of one record [time, 12].

    T amplitude: the signed extremum (per lead) of the median beat in
    [0.15, 0.40] s x sqrt(RR); U amplitude: the maximum in [0.45, 0.65] s x
    sqrt(RR); baseline: the PR segment [-0.10, -0.075] s.
    """
    tpl, rr = median_beat(x, rate)
    t = (np.arange(len(tpl)) - int(0.3 * rate)) / rate
    tpl = tpl - tpl[(t >= -0.10) & (t <= -0.075)].mean(axis=0)
    s = np.sqrt(rr)
    t_seg = tpl[(t >= 0.15 * s) & (t <= 0.40 * s)]
    t_amp = t_seg[np.argmax(np.abs(t_seg), axis=0), np.arange(12)]
    u_win = (t >= 0.45 * s) & (t <= 0.65 * s)
    p_win = (t >= -0.26) & (t <= -0.11)
    # QRS width: the run within +-0.1 s where the spatial magnitude (sum
    # over leads of |x|) exceeds 30% of its peak
    mag = np.abs(tpl).sum(axis=1)
    win = np.flatnonzero(np.abs(t) <= 0.1)
    above = win[mag[win] > 0.3 * mag[win].max()]
    left, right = above.min(), above.max()
    return {"t_amp": t_amp, "u_amp": tpl[u_win].max(axis=0), "p_amp": tpl[p_win, II].max(),
            "qrs_width": (right - left + 1) / rate, "rr": rr, "template": tpl}


def test_shapes_dtypes_and_backends():
    x, y = simulate(0, 5, duration=1.0)
    assert x.shape == (5, 100, 12) and x.dtype == np.float32
    assert y.shape == (5,) and y.dtype == np.float32
    assert isinstance(x, np.ndarray) and np.all(np.isfinite(x))
    xj, yj = simulate(0, 3, preset="lvef", rate=500, duration=1.0, backend="jax")
    assert isinstance(xj, jax.Array) and xj.shape == (3, 500, 12) and xj.dtype == jnp.float32
    assert yj.shape == (3,) and np.all(np.isfinite(np.asarray(xj)))


def test_einthoven_and_goldberger_relations_hold():
    x, _ = simulate(3, 4, duration=1.0)
    lead_i, lead_ii, lead_iii, avr, avl, avf = (x[..., k] for k in range(6))
    np.testing.assert_allclose(lead_ii, lead_i + lead_iii, atol=1e-5)
    np.testing.assert_allclose(avr + avl + avf, 0.0, atol=1e-5)


def test_deterministic_for_seed_chunking_start_and_devices():
    x1, y1 = simulate(7, 8, duration=1.0)
    x2, y2 = simulate(7, 8, duration=1.0, chunk_size=3)  # chunks of 3, 3, 2
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    x3, y3 = simulate(7, 3, duration=1.0, start=5)
    np.testing.assert_array_equal(x1[5:], x3)
    np.testing.assert_array_equal(y1[5:], y3)
    x4, _ = simulate(8, 8, duration=1.0)
    assert not np.allclose(x1, x4)
    # the same records computed with the work spread over all devices
    n = 2 * jax.device_count()  # 2 records per device
    mesh = jax.make_mesh((n // 2,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
    shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
    args = (np.arange(n, dtype=np.uint32), np.zeros(n, np.float32), np.zeros(n, bool))
    xs, _ = sim._simulate_chunk(jax.random.key(7), *(jax.device_put(a, shard) for a in args),
                                preset="potassium", rate=100.0, n_time=100,
                                n_beats=sim.beats_needed(1.0))
    assert len(xs.sharding.device_set) == n // 2
    np.testing.assert_array_equal(np.asarray(xs), simulate(7, n, duration=1.0)[0])


def _mixture_sf(dist, v):
    """P(y > v) of the unclipped mixture, from scipy.stats."""
    main = stats.norm.sf(v, dist.mean, dist.sd)
    tail_sf = (stats.expon.sf(v - dist.tail_start, scale=dist.tail_scale) if dist.tail_sign > 0
               else stats.expon.cdf(dist.tail_start - v, scale=dist.tail_scale))
    return (1 - dist.tail_weight) * main + dist.tail_weight * tail_sf


@pytest.mark.parametrize("preset,cuts", [("potassium", (3.5, 5.5, 6.5)), ("lvef", (30.0, 40.0, 50.0))])
def test_label_histogram_matches_documented_mixture(preset, cuts):
    n = 20000
    _, y = simulate(11, n, preset=preset, duration=0.02)
    if preset == "potassium":  # labels do not depend on the duration
        np.testing.assert_array_equal(y[:8], simulate(11, 8, duration=1.0)[1])
    dist = PRESETS[preset].labels
    assert y.min() >= dist.clip[0] and y.max() <= dist.clip[1]
    for c in cuts:
        expected = _mixture_sf(dist, c)
        se = np.sqrt(expected * (1 - expected) / n)
        assert abs(np.mean(y > c) - expected) < 4 * se + 1e-4, (c, np.mean(y > c), expected)
    if preset == "potassium":  # the documented skew
        assert 0.03 <= np.mean(y > 5.5) <= 0.05
        assert 0.005 <= np.mean(y > 6.5) <= 0.01
        assert 0.005 < np.mean(y < 3.5) < np.mean(y > 5.5)
        assert 3.9 < np.median(y) < 4.5
    else:
        assert np.mean(y < 40) > np.mean(y > 72) and 0.005 <= np.mean(y < 30) <= 0.02


@pytest.fixture(scope="module")
def grid_features():
    """Beat features of 48 records at each potassium level (250 Hz, 8 s)."""
    levels = np.array([2.6, 3.2, 3.8, 4.4, 5.0, 5.6, 6.2, 6.8, 7.4, 8.0], np.float32)
    labels = np.repeat(levels, 48)
    x, _ = simulate(21, labels.size, rate=250, duration=8.0, labels=labels)
    feats = [beat_features(r, 250) for r in x]
    return levels, labels, feats


def _by_level(levels, labels, feats, fn):
    """Median over the records of each level (robust to a missed R peak)."""
    return np.array([np.median([fn(f) for f, l in zip(feats, labels) if l == v]) for v in levels])


def test_median_t_wave_rises_with_potassium_and_flattens_when_low(grid_features):
    levels, labels, feats = grid_features
    normal = levels == 4.4
    for lead in (II, V3):
        t_amp = _by_level(levels, labels, feats, lambda f: f["t_amp"][lead])
        assert np.all(np.diff(t_amp) > 0), (lead, t_amp)                  # monotone in K
        assert t_amp[levels == 6.8][0] > 1.8 * t_amp[normal][0], t_amp     # peaked T
        assert abs(t_amp[levels == 3.2][0]) < 0.35 * t_amp[normal][0], t_amp   # flat T
        assert t_amp[levels == 2.6][0] < 0, t_amp                          # inverted T


def test_u_wave_grows_when_potassium_is_low(grid_features):
    levels, labels, feats = grid_features
    u_amp = _by_level(levels, labels, feats, lambda f: f["u_amp"][V3])
    assert u_amp[levels == 2.6][0] > 2.0 * u_amp[levels == 4.4][0], u_amp
    assert np.all(np.diff(u_amp[levels <= 4.4]) < 0), u_amp


def test_qrs_widens_and_p_flattens_above_6_5(grid_features):
    levels, labels, feats = grid_features
    width = _by_level(levels, labels, feats, lambda f: f["qrs_width"])
    normal, k62, k80 = (width[levels == v][0] for v in (4.4, 6.2, 8.0))
    assert abs(k62 - normal) < 0.1 * normal, width      # unchanged up to ~6
    assert k80 > 1.25 * normal and np.all(np.diff(width[levels >= 6.2]) > 0), width
    p_amp = _by_level(levels, labels, feats, lambda f: f["p_amp"])
    assert p_amp[levels == 8.0][0] < 0.7 * p_amp[levels == 4.4][0], p_amp


def test_ridge_on_median_beats_predicts_potassium_better_than_the_mean():
    x, y = simulate(31, 1200, rate=250, duration=8.0)  # labels from the preset distribution
    beats = [beat_features(r, 250) for r in x]
    feats = np.stack([np.append(b["template"][::5].ravel(), b["rr"]) for b in beats])
    tr, te = slice(0, 900), slice(900, None)
    model = RidgeCV(alphas=np.logspace(-2, 3, 12)).fit(feats[tr], y[tr])
    r2 = r2_score(y[te], model.predict(feats[te]))
    assert r2 > 0.3, r2


def test_muscle_noise_generator_moments_and_independence():
    z = np.asarray(sim._approx_normal(jax.random.key(0), (400, 500)))
    other = np.asarray(sim._approx_normal(jax.random.key(1), (400, 500))).ravel()
    flat = z.ravel()
    assert abs(flat.mean()) < 0.01 and abs(flat.std() - 1) < 0.01
    # Irwin-Hall sum of 4 uniforms: excess kurtosis -6 / (5 * 4) = -0.3
    assert abs(stats.kurtosis(flat) - (-0.3)) < 0.03
    assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 0.01
    assert abs(np.corrcoef(flat, other)[0, 1]) < 0.01


@pytest.mark.parametrize("kwargs,match", [
    (dict(n=0), "n:"), (dict(rate=-1.0), "rate:"), (dict(duration=0.0), "duration:"),
    (dict(preset="sodium"), "preset:"), (dict(backend="torch"), "backend:"),
    (dict(labels=np.ones(3)), "labels:"), (dict(labels=np.full(4, 20.0)), "labels:"),
    (dict(chunk_size=0), "chunk_size:"), (dict(seed=1.5), "seed:"), (dict(seed=-2), "seed:"),
    (dict(start=2**32 - 2), "start:"), (dict(start=-1), "start:"),
    (dict(rate=True), "rate:"), (dict(duration=np.array([1.0, 2.0])), "duration:"),  # 1 Hz
    (dict(duration=1e308), "duration: expected duration \\* rate to be a finite number"),
    (dict(rate=1e200, duration=1e200), "duration: .*finite"),   # int(inf) was OverflowError
])
def test_bad_arguments_raise(kwargs, match):
    args = dict(seed=0, n=4, duration=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        simulate(**args)


def test_effective_labels_reproduce_labels_and_drive_the_waveform():
    y_sim = simulate(3, 300, "potassium", rate=100)[1]
    y, eff = effective_labels(3, np.arange(300), "potassium")
    np.testing.assert_allclose(y, y_sim, rtol=0, atol=1e-6)
    y_late, _ = effective_labels(3, np.arange(100, 108))
    np.testing.assert_allclose(y_late, simulate(3, 8, start=100)[1], rtol=0, atol=1e-6)
    # The noise is the documented N(0, (base + slope |y - mean|)^2) (KS test).
    d = PRESETS["potassium"].labels
    _, eff_many = effective_labels(4, np.arange(20_000))
    y_many, _ = effective_labels(4, np.arange(20_000))
    z = (eff_many - y_many) / (d.noise_base + d.noise_slope * np.abs(y_many - d.mean))
    assert stats.kstest(z, "norm").pvalue > 1e-3
    # The T wave (median beat, V3) tracks the effective label better than the label.
    x, _ = simulate(3, 300, "potassium", rate=100)
    t_amp = np.array([beat_features(r, 100)["t_amp"][8] for r in x])
    assert stats.spearmanr(t_amp, eff)[0] > stats.spearmanr(t_amp, y)[0] + 0.02
    with pytest.raises(ValueError, match="indices"):
        effective_labels(0, np.array([-1, 2]))
    with pytest.raises(ValueError, match="seed"):
        effective_labels(-1, np.arange(3))


def test_numpy_integer_start_and_n_do_not_wrap():
    """start + n is checked in Python ints: numpy scalars neither wrap past 2**32
    (which would repeat records 0, 1, ...) nor overflow a valid request."""
    with pytest.raises(ValueError, match="start: expected start \\+ n <= 2\\*\\*32"):
        simulate(0, 4, duration=0.05, start=np.uint32(2**32 - 2))
    with pytest.raises(ValueError, match="start: expected start \\+ n <= 2\\*\\*32"):
        simulate(0, np.uint32(4), duration=0.05, start=2**32 - 2)
    a = simulate(0, 20, duration=0.05, start=np.int32(2**31 - 10), chunk_size=8)
    b = simulate(0, 20, duration=0.05, start=2**31 - 10, chunk_size=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_the_last_record_indices_simulate():
    """start + n == 2**32 is valid; the padded chunk past it must not overflow
    (uint32 arange did). The label equals effective_labels' for that index."""
    _, y = simulate(0, 1, duration=0.05, start=2**32 - 1)
    _, y8 = simulate(0, 9, duration=0.05, start=2**32 - 9, chunk_size=8)
    expected = effective_labels(0, np.array([2**32 - 1]))[0]
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-6)
    assert y8[-1] == y[0]
    with pytest.raises(ValueError, match=r"n: expected start \+ n <= 2\*\*32"):
        simulate(0, 2**32 + 1, duration=0.05)


def test_records_do_not_change_under_jax_enable_x64():
    """The random draws are float32 whatever the default dtype: a process with
    jax_enable_x64 simulates the same records (labels included) bit for bit."""
    import subprocess
    import sys
    code = ("import jax; jax.config.update('jax_enable_x64', True)\n"
            "import numpy as np; from hypuc_jax.data import simulate\n"
            "x, y = simulate(3, 4, duration=1.0)\n"
            "np.savez(sys.argv[1], x=x, y=y)")
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        out = f"{d}/x64.npz"
        subprocess.run([sys.executable, "-c", "import sys\n" + code, out], check=True,
                       capture_output=True)
        z = np.load(out)
        x, y = simulate(3, 4, duration=1.0)
        np.testing.assert_array_equal(z["x"], x)
        np.testing.assert_array_equal(z["y"], y)


def test_a_large_chunk_gives_the_same_records():
    """A chunk_size far above n gives the same records as a tiny one (the cap on the
    chunk, which spares simulating padding records, is a cost, not checked here)."""
    a = simulate(3, 2, duration=0.5, chunk_size=512)
    b = simulate(3, 2, duration=0.5, chunk_size=2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_task_info_to_dict_is_json_for_numpy_thresholds():
    import json

    from hypuc_jax.data.tasks import TaskInfo, Threshold

    info = TaskInfo("a", "a", thresholds=(Threshold("x", np.float32(1.5), "above"),))
    d = json.loads(json.dumps(info.to_dict()))
    assert d["thresholds"] == [{"name": "x", "value": 1.5, "direction": "above"}]
    assert TaskInfo.from_dict(d).thresholds[0].value == 1.5
