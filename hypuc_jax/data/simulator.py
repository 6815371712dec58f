"""12-lead ECG simulator with a clinical label (pure JAX: jit + vmap).

Model (ECGSYN family, McSharry et al. 2003, in time rather than phase):
every beat is a sum of Gaussian bumps, one per wave (P, Q, R, S, ST, T, U),
each with a centre relative to the R peak, a width, an amplitude and a 3-D
dipole direction (x left, y inferior, z anterior). The 3-D heart vector is
projected onto the 12 standard lead vectors (Einthoven/Goldberger limb leads
in the frontal plane, so that II = I + III and aVR + aVL + aVF = 0 hold
exactly; V1..V6 in the horizontal plane). Per record: heart rate, heart-rate
variability (respiratory sinus arrhythmia + beat jitter), electrical axis (a
frontal and a horizontal rotation of all dipoles plus per-wave jitter), wave
amplitudes, age and sex; T-wave onset follows Bazett (centre ~ sqrt(RR)).
Noise: respiratory baseline wander, electrode drift, powerline hum at 50 or
60 Hz (only when below 0.45 * rate: a lower-rate recorder's anti-alias filter
removes it) and white muscle noise.

Potassium (preset ``"potassium"``) acts through monotone relations taken
from clinical ECG knowledge (e.g. Diercks et al. 2004; Levis 2012), in terms
of ``ramp(z) = 0.2 * softplus(z / 0.2)`` (a smooth ``max(0, z)``) of the
record's effective potassium ``k``:

* T amplitude follows K already in the normal range (the basis of
  ECG-based K estimation in dialysis patients, e.g. Corsi et al. 2017):
  ``T amp x (1 + 0.3 (k - 4.2) + 0.6 ramp(k - 4.6) - 0.75 ramp(3.9 - k))``;
* hyperkalemia first speeds repolarisation (a higher extracellular K raises
  the IKr conductance): taller AND narrower (peaked) T waves,
  ``T width / (1 + 0.25 ramp(k - 4.6))``;
* then slows atrial conduction: flatter, wider P, longer PR,
  ``P amp / (1 + ramp(k - 6))``, ``PR + 30 ms x ramp(k - 6)``;
* then slows ventricular conduction: wider QRS,
  ``QRS width x (1 + 0.35 ramp(k - 6.5))``;
* hypokalemia delays and flattens repolarisation: the T term above makes
  the T wave flat at about 3.04 mmol/L and inverted below it; U waves grow
  ``x (1 + 3 ramp(3.9 - k))``, ST depression ``-0.08 mV x ramp(3.9 - k)``,
  T and U later by ``50 ms x ramp(3.9 - k)`` (longer QT(U)).

The ejection-fraction preset ``"lvef"`` uses ``d = ramp((50 - ef) / 10)``:
wider QRS ``x (1 + 0.25 d)``, lower R ``/ (1 + 0.2 d)``, deeper Q
``x (1 + 0.6 d)``, flatter T ``x (1 - 0.3 d)``, faster heart ``+5 d bpm``.

The label is not a function of one feature: T amplitude also varies with a
per-record log-normal factor (sd 0.2), age (-0.5%/year from 50), sex
(female x 0.85) and heart rate (-0.4%/bpm from 70), and the waveform is driven
by an effective label ``y + (noise_base + noise_slope * |y - mean|) * N(0,1)``
(see :mod:`hypuc_jax.data.tasks`), so the aleatoric noise is larger at the
extremes (potassium: sd 0.15 mmol/L at 4.2, 0.5 at 6.5).

Label distributions (details in :mod:`hypuc_jax.data.tasks`): potassium
mostly 3.5-5.0 around 4.2 mmol/L, 2.0% below 3.5, 3.7% above 5.5, 0.88%
above 6.5, clipped to [2, 9]; lvef mostly ~60%, 13% below 50, 3.4% below 40,
1.2% below 30, clipped to [10, 80].

Determinism: record ``i`` of seed ``s`` uses the key
``fold_in(key(s), i)`` only, and every per-record operation is elementwise
(no ``dot_general`` whose rounding depends on the batch), so the arrays are
bit-identical whatever the chunk size, the number of records drawn, or how
the work is spread over devices (tested with 2+ records per device; a chunk
of ONE record lets XLA drop the batch axis and may differ in the last float32
bit, so ``simulate`` never uses chunks smaller than 2).
"""
from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np

from hypuc_jax import _validation as V
from hypuc_jax.data.sim_labels import _label_draws, check_seed
from hypuc_jax.data.tasks import get_preset

LEAD_NAMES = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
WAVES = ("P", "Q", "R", "S", "ST", "T", "U")
_P, _Q, _R, _S, _ST, _T, _U = range(7)


def _lead_matrix() -> np.ndarray:
    """Lead vectors [12, 3] in (x left, y inferior, z anterior) coordinates."""
    lead_i = np.array([1.0, 0.0, 0.0])
    lead_ii = np.array([0.5, math.sqrt(3) / 2, 0.0])
    lead_iii = lead_ii - lead_i
    limb = [lead_i, lead_ii, lead_iii, -(lead_i + lead_ii) / 2, (lead_i - lead_iii) / 2,
            (lead_ii + lead_iii) / 2]
    # precordial electrodes: angle in the horizontal plane from the left (x)
    # towards anterior (z), slight inferior tilt; chest leads read larger.
    prec = [1.5 * np.array([math.cos(math.radians(a)), 0.1, math.sin(math.radians(a))])
            for a in (115.0, 95.0, 75.0, 60.0, 35.0, 5.0)]
    return np.stack(limb + prec).astype(np.float32)


def _electrode_matrix() -> np.ndarray:
    """Leads [12] from electrode potentials (RA, LA, LL, V1..V6): [12, 9]."""
    ra, la, ll = np.eye(9)[0], np.eye(9)[1], np.eye(9)[2]
    wct = (ra + la + ll) / 3
    limb = [la - ra, ll - ra, ll - la, ra - (la + ll) / 2, la - (ra + ll) / 2, ll - (ra + la) / 2]
    return np.stack(limb + [np.eye(9)[3 + i] - wct for i in range(6)]).astype(np.float32)


LEAD_MATRIX = _lead_matrix()            # [12, 3] heart vector -> leads
ELECTRODE_MATRIX = _electrode_matrix()  # [12, 9] electrode potentials -> leads
_SOURCE_MATRIX = np.concatenate([LEAD_MATRIX, ELECTRODE_MATRIX], axis=1)

# Base wave table: centre (s from R), width (s), amplitude (mV), direction.
_CENTER = np.array([-0.16, -0.035, 0.0, 0.035, 0.13, 0.30, 0.46], np.float32)
_WIDTH = np.array([0.022, 0.010, 0.012, 0.012, 0.05, 0.055, 0.04], np.float32)
_AMP = np.array([0.15, 0.12, 1.3, 0.45, 0.0, 0.35, 0.04], np.float32)
_DIR = np.array([[0.6, 0.75, 0.2],     # P: atria, leftward-inferior
                 [-0.6, 0.2, 0.75],    # Q: septum, rightward-anterior
                 [0.65, 0.6, -0.45],   # R: left ventricle, left-inferior-posterior
                 [-0.4, -0.5, -0.75],  # S: basal, rightward-superior-posterior
                 [0.55, 0.6, 0.55],    # ST: along the T vector
                 [0.55, 0.6, 0.55],    # T
                 [0.55, 0.6, 0.55]],   # U
                np.float32)
_DIR = _DIR / np.linalg.norm(_DIR, axis=1, keepdims=True)
_MIN_RR, _PRE = 0.35, 0.7   # shortest RR (s), first beat this long before t=0


def _ramp(z):
    return 0.2 * jax.nn.softplus(z / 0.2)


def _neutral(ones):
    keys = ("t_amp", "t_width", "t_shift", "p_amp", "p_width", "pr_shift", "qrs_width",
            "r_amp", "q_amp", "u_amp", "st_amp", "hr_shift")
    zero_keys = ("t_shift", "pr_shift", "st_amp", "hr_shift")
    return {k: (0.0 * ones if k in zero_keys else ones) for k in keys}


def _potassium_effects(k):
    fx = _neutral(jnp.ones_like(k))
    hi, lo = _ramp(k - 4.6), _ramp(3.9 - k)
    fx["t_amp"] = 1.0 + 0.3 * (k - 4.2) + 0.6 * hi - 0.75 * lo
    fx["t_width"] = 1.0 / (1.0 + 0.25 * hi)
    fx["t_shift"] = 0.05 * lo
    fx["p_amp"] = 1.0 / (1.0 + _ramp(k - 6.0))
    fx["p_width"] = 1.0 + 0.2 * _ramp(k - 6.0)
    fx["pr_shift"] = 0.03 * _ramp(k - 6.0)
    fx["qrs_width"] = 1.0 + 0.35 * _ramp(k - 6.5)
    fx["u_amp"] = 1.0 + 3.0 * lo
    fx["st_amp"] = -0.08 * lo
    return fx


def _lvef_effects(ef):
    fx = _neutral(jnp.ones_like(ef))
    d = _ramp((50.0 - ef) / 10.0)
    fx["qrs_width"] = 1.0 + 0.25 * d
    fx["r_amp"] = 1.0 / (1.0 + 0.2 * d)
    fx["q_amp"] = 1.0 + 0.6 * d
    fx["t_amp"] = 1.0 - 0.3 * d
    fx["hr_shift"] = 5.0 * d
    return fx


EFFECTS = {"potassium": _potassium_effects, "lvef": _lvef_effects}


def _dot(a, b):
    """``a [..., K] @ b [K, N]`` as an unrolled sum in fixed order.

    Elementwise only: unlike ``dot_general`` its rounding does not depend on
    the batch size XLA sees, so a record is bit-identical whatever the chunk
    size or device count.
    """
    out = a[..., 0:1] * b[0]
    for k in range(1, b.shape[0]):
        out = out + a[..., k:k + 1] * b[k]
    return out


def _hash32(x):
    """lowbias32 integer hash (C. Wellons): a cheap bijection of uint32."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _approx_normal(key, shape):
    """Approximately standard normal noise: Irwin-Hall sum of the 4 bytes of a
    random 32-bit word, rescaled to mean 0, variance 1 (bounded at +-3.46).

    The words are a keyed hash of the sample counter,
    ``hash(hash(counter ^ s0) ^ s1)`` with ``(s0, s1)`` drawn from ``key``:
    several times cheaper on CPU than threefry + ``erf_inv``
    (``jax.random.normal``), which matters for the per-sample muscle noise;
    good enough for noise, not a cryptographic generator.
    """
    seeds = jax.random.bits(key, (2,), jnp.uint32)
    counter = jnp.arange(math.prod(shape), dtype=jnp.uint32).reshape(shape)
    bits = _hash32(_hash32(counter ^ seeds[0]) ^ seeds[1])
    total = ((bits & 0xFF) + ((bits >> 8) & 0xFF) + ((bits >> 16) & 0xFF) + (bits >> 24))
    return (total.astype(jnp.float32) - 510.0) * (1.0 / math.sqrt(4 * (256**2 - 1) / 12))


def _record(key, label, has_label, *, preset: str, rate: float, n_time: int, n_beats: int):
    """One record: (x [time, 12], y []) from its key.

    Five random draws per record (few threefry calls keep compilation fast):
    the label (its own key, so labels do not depend on rate or duration),
    record normals ``z``, record uniforms ``u``, beat jitter, muscle noise.
    """
    y, eff, z, (k_u, k_beat, k_white) = _label_draws(key, label, has_label, preset)
    u = jax.random.uniform(k_u, (32,), jnp.float32)   # float32 also under x64
    fx = EFFECTS[preset](eff)

    # record factors
    age, female = 20.0 + 70.0 * u[0], (u[1] < 0.5).astype(jnp.float32)
    hr = jnp.clip(70.0 + 11.0 * z[0], 45.0, 130.0) + fx["hr_shift"]
    rr_mean = 60.0 / hr
    f_resp, ph_resp, rsa = 0.15 + 0.2 * u[2], 2 * jnp.pi * u[3], 0.06 * u[4]
    jitter = 0.01 + 0.03 * u[5]
    t_factor = (jnp.exp(0.2 * z[1]) * (1.0 - 0.005 * (age - 50.0)) * (1.0 - 0.15 * female)
                * (1.0 - 0.004 * (hr - 70.0)))

    # beats: R times [B]
    i = jnp.arange(n_beats, dtype=jnp.float32)
    eps = jax.random.normal(k_beat, (n_beats,), jnp.float32)
    rr = rr_mean * (1.0 + rsa * jnp.sin(2 * jnp.pi * f_resp * i * rr_mean + ph_resp) + jitter * eps)
    rr = jnp.clip(rr, _MIN_RR, 2.0)
    r_time = -_PRE - u[6] * rr_mean + jnp.cumsum(rr) - rr[0]
    beat_gain = 1.0 + 0.05 * jnp.sin(2 * jnp.pi * f_resp * r_time + ph_resp)

    # waves: centres per beat [B, W], widths [W], dipoles [W, 3]
    qrs = fx["qrs_width"]
    shift = jnp.array([-fx["pr_shift"], 0.0, 0.0, 0.0, 0.0, fx["t_shift"], fx["t_shift"]])
    stretch = jnp.array([1.0, qrs, 1.0, qrs, 1.0, 1.0, 1.0])
    center = _CENTER * stretch + shift
    late = jnp.array([0, 0, 0, 0, 1, 1, 1], jnp.float32)       # ST, T, U follow Bazett
    center = center[None, :] * (1.0 + late * (jnp.sqrt(rr)[:, None] - 1.0))  # [B, W]
    width = _WIDTH * jnp.array([fx["p_width"], qrs, qrs, qrs, 1.0, fx["t_width"], 1.0])
    amp = _AMP * jnp.exp(0.2 * z[2:9]) * jnp.exp(0.2 * z[9])
    amp = amp * jnp.array([fx["p_amp"], fx["q_amp"], fx["r_amp"], 1.0, 1.0,
                           fx["t_amp"] * t_factor, fx["u_amp"]])
    amp = amp.at[_ST].set(fx["st_amp"])
    alpha, beta = jnp.deg2rad(20.0 * z[10]), jnp.deg2rad(15.0 * z[11])
    ca, sa, cb, sb = jnp.cos(alpha), jnp.sin(alpha), jnp.cos(beta), jnp.sin(beta)
    rot_frontal = jnp.array([[ca, -sa, 0.0], [sa, ca, 0.0], [0.0, 0.0, 1.0]])
    rot_horiz = jnp.array([[cb, 0.0, -sb], [0.0, 1.0, 0.0], [sb, 0.0, cb]])
    dirs = _dot(_DIR + 0.1 * z[15:36].reshape(_DIR.shape), _dot(rot_horiz, rot_frontal).T)
    dipole = amp[:, None] * dirs                                  # [W, 3]

    # each sample sees the waves of the beats before and after it (k-1, k)
    t = jnp.arange(n_time, dtype=jnp.float32) / rate
    k = jnp.clip(jnp.searchsorted(r_time, t, side="right"), 1, n_beats - 1)
    idx = k[:, None] + jnp.array([-1, 0])                        # [T, 2]
    dt = t[:, None] - r_time[idx]                                 # [T, 2]
    g = jnp.exp(-0.5 * jnp.square((dt[..., None] - center[idx]) / width))  # [T, 2, W]
    gain = beat_gain[idx]
    bumps = g[:, 0] * gain[:, 0:1] + g[:, 1] * gain[:, 1:2]       # [T, W]
    heart = _dot(bumps, dipole)                                   # [T, 3]

    # noise: respiratory wander (3-D); per electrode (RA, LA, LL, V1..V6):
    # drift, powerline pick-up and muscle noise, seen by the leads through
    # ELECTRODE_MATRIX (so the noise is correlated across leads as in reality)
    wander_dir = z[12:15] / (jnp.linalg.norm(z[12:15]) + 1e-6)
    wander = (0.15 * u[7] * jnp.sin(2 * jnp.pi * f_resp * t + u[8] * 6.283)
              + 0.1 * u[9] * jnp.sin(2 * jnp.pi * (0.05 + 0.1 * u[10]) * t + u[11] * 6.283))
    drift = 0.01 * z[36:45]
    f_line = jnp.where(u[12] < 0.5, 50.0, 60.0)
    line_amp = jnp.where(f_line < 0.45 * rate, 0.015 * u[13], 0.0)
    line = line_amp * jnp.sin(2 * jnp.pi * f_line * t + 6.283 * u[14])
    gains = 0.5 + u[16:25]
    muscle = (0.004 + 0.016 * u[15]) * _approx_normal(k_white, (n_time, 9))
    electrodes = drift * t[:, None] + line[:, None] * gains + muscle     # [T, 9]
    sources = jnp.concatenate([heart + wander[:, None] * wander_dir, electrodes], axis=1)
    x = _dot(sources, _SOURCE_MATRIX.T)                                   # [T, 12]
    return x.astype(jnp.float32), y.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("preset", "rate", "n_time", "n_beats"))
def _simulate_chunk(key, indices, labels, has_label, *, preset, rate, n_time, n_beats):
    """Records ``indices`` [c] of ``key``: x [c, n_time, 12], y [c]."""
    chex.assert_rank(indices, 1)
    chex.assert_equal_shape([indices, labels, has_label])
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, indices)
    fn = functools.partial(_record, preset=preset, rate=rate, n_time=n_time, n_beats=n_beats)
    x, y = jax.vmap(fn)(keys, labels, has_label)
    chex.assert_shape(x, (indices.shape[0], n_time, 12))
    return x, y


def beats_needed(duration: float) -> int:
    """Beats simulated per record (covering [-_PRE, duration + 1 s] at the shortest RR)."""
    return int(math.ceil((float(duration) + _PRE + 1.0) / _MIN_RR)) + 3


def default_chunk_size(n_time: int) -> int:
    """Records per jitted call: a power of two with bounded intermediates (~50 MB)."""
    fit = max(8, 524_288 // max(n_time, 1))
    return int(min(512, 1 << (fit.bit_length() - 1)))


def simulate(seed: int, n: int, preset: str = "potassium", rate: float = 100,
             duration: float = 10.0, backend: str = "numpy", *, labels=None,
             start: int = 0, chunk_size: int | None = None):
    """Simulates ``n`` 12-lead ECG records and their labels.

    Args:
      seed: integer seed in [0, 2**32); record ``i`` depends only on ``(seed, start + i)``.
      n: number of records (> 0).
      preset: ``"potassium"`` or ``"lvef"`` (see :mod:`hypuc_jax.data.tasks`).
      rate: sampling rate in Hz (> 0), e.g. 100 or 500.
      duration: record length in seconds (> 0); ``round(duration * rate)``
        samples.
      backend: ``"numpy"`` (host arrays) or ``"jax"`` (device arrays).
      labels: optional [n] labels to condition on instead of drawing them
        from the preset's distribution (same label units).
      start: index of the first record (draw records ``start .. start+n-1``).
      chunk_size: records per jitted call (default: :func:`default_chunk_size`;
        at most the power of two at or above n, at least 8); does not change
        the result.

    Returns:
      ``(x [n, time, 12] float32 in mV, leads in LEAD_NAMES order, y [n] float32)``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"n: expected a positive integer, got {n!r}")
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
        raise ValueError(f"start: expected a non-negative integer, got {start!r}")
    check_seed(seed)
    seed, start, n = int(seed), int(start), int(n)   # numpy scalars would wrap in the sums below
    if start + n > 2**32:
        name = "n" if start == 0 else "start"
        raise ValueError(f"{name}: expected start + n <= 2**32 record indices (n={n}, "
                         f"start={start}), got {start + n}")
    dist = get_preset(preset).labels
    V.check_positive(rate, "rate", scalar=True)          # scalar: True is not 1 Hz
    V.check_positive(duration, "duration", scalar=True)
    if backend not in ("numpy", "jax"):
        raise ValueError(f"backend: expected 'numpy' or 'jax', got {backend!r}")
    if not math.isfinite(float(duration) * float(rate)):
        raise ValueError(f"duration: expected duration * rate to be a finite number of "
                         f"samples, got {duration:g} s at {rate:g} Hz")
    n_time = int(round(float(duration) * float(rate)))
    if n_time < 1:
        raise ValueError(f"duration: expected duration * rate >= 1 sample, got {duration} s at {rate} Hz")
    if labels is None:
        lab, has = np.zeros(n, np.float32), np.zeros(n, bool)
    else:
        lab = np.asarray(V.as_array(labels, "labels", ndim=1), np.float32)
        if lab.shape[0] != n:
            raise ValueError(f"labels: expected {n} labels (one per record), got {lab.shape[0]}")
        V.check_finite(lab, "labels")
        lo, hi = dist.clip
        if lab.min() < lo or lab.max() > hi:
            raise ValueError(f"labels: expected values in [{lo}, {hi}] for preset {preset!r}, "
                             f"got range [{lab.min()}, {lab.max()}]")
        has = np.ones(n, bool)
    if chunk_size is None:  # powers of two: few distinct compilations for small n
        chunk = min(default_chunk_size(n_time), max(8, 1 << (int(n) - 1).bit_length()))
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size <= 0:
        raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size!r}")
    else:  # a 1-record chunk lets XLA drop the batch axis and round differently; a chunk
        # beyond the default's power of two above n would only simulate padding
        chunk = max(2, min(int(chunk_size), max(8, 1 << (n - 1).bit_length())))
    n_beats = beats_needed(duration)
    key = jax.random.key(int(seed))

    def launch(s):  # fixed-size chunks (the last one padded): one compilation
        m = min(chunk, n - s)
        # int64 then uint32: the padding past 2**32 - 1 wraps (discarded), no overflow
        ind = (np.arange(chunk, dtype=np.int64) + (start + s)).astype(np.uint32)
        l_c, h_c = np.pad(lab[s:s + m], (0, chunk - m)), np.pad(has[s:s + m], (0, chunk - m))
        return m, _simulate_chunk(key, ind, l_c, h_c, preset=preset, rate=float(rate),
                                  n_time=n_time, n_beats=n_beats)

    starts = list(range(0, n, chunk))
    if backend == "jax":
        outs = [launch(s) for s in starts]
        return (jnp.concatenate([x[:m] for m, (x, _) in outs]),
                jnp.concatenate([y[:m] for m, (_, y) in outs]))
    x_out, y_out = np.empty((n, n_time, 12), np.float32), np.empty((n,), np.float32)
    pending = launch(0)
    for i, s in enumerate(starts):  # copy chunk i to the host while chunk i+1 runs
        m, (x, y) = pending
        if i + 1 < len(starts):
            pending = launch(starts[i + 1])
        x_out[s:s + m], y_out[s:s + m] = np.asarray(x)[:m], np.asarray(y)[:m]
    return x_out, y_out
