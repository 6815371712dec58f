"""Labels of simulated records: the drawn label and the effective label.

Record ``i`` of seed ``s`` draws, from its key ``fold_in(key(s), i)``, a
label from the preset's mixture and an effective label
``y + (noise_base + noise_slope * |y - mean|) * N(0, 1)`` that drives its
waveform (:mod:`hypuc_jax.data.simulator`). :func:`effective_labels`
replays exactly these draws without simulating the signals, e.g. to score a
perfect reader of the ECG (``experiments/bayes_floor.py``).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from hypuc_jax.data.tasks import LabelDistribution, get_preset


def _sample_label(u, dist: LabelDistribution):
    """Label from 3 uniforms: mixture choice, normal bulk, exponential tail."""
    main = dist.mean + dist.sd * jax.scipy.special.ndtri(u[1])
    tail = dist.tail_start + dist.tail_sign * dist.tail_scale * -jnp.log1p(-u[2])
    y = jnp.where(u[0] < dist.tail_weight, tail, main)
    return jnp.clip(y, *dist.clip)


def _label_draws(key, label, has_label, preset: str):
    """(y, effective label, record normals z [48], remaining keys) of one record's key."""
    dist = get_preset(preset).labels
    k_lab, k_z, k_u, k_beat, k_white = jax.random.split(key, 5)
    y = jnp.where(has_label, label, _sample_label(jax.random.uniform(k_lab, (3,), jnp.float32), dist))
    z = jax.random.normal(k_z, (48,), jnp.float32)   # float32 also under jax_enable_x64
    eff = y + (dist.noise_base + dist.noise_slope * jnp.abs(y - dist.mean)) * z[47]
    return y, eff, z, (k_u, k_beat, k_white)


@functools.partial(jax.jit, static_argnames=("preset",))
def _effective_chunk(key, indices, preset):
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, indices)
    zeros = jnp.zeros(indices.shape, jnp.float32)
    y, eff, _, _ = jax.vmap(functools.partial(_label_draws, preset=preset))(
        keys, zeros, jnp.zeros(indices.shape, bool))
    return y.astype(jnp.float32), eff.astype(jnp.float32)


MAX_SEED = 2**32   # jax.random.key keeps only the low 32 bits of a seed without jax_enable_x64


def check_seed(seed) -> None:
    """Raises ValueError unless ``seed`` is an integer (not a bool) in ``[0, 2**32)``.

    Larger seeds would overflow (>= 2**63) or, without ``jax_enable_x64``,
    silently give the records of ``seed % 2**32``.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) \
            or not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed: expected an integer in [0, 2**32), got {seed!r}")


def effective_labels(seed: int, indices, preset: str = "potassium") -> tuple[np.ndarray, np.ndarray]:
    """Labels and effective labels of records ``indices`` of ``simulate(seed, ...)``.

    The waveform of a record is driven by its effective label (the label plus
    the preset's aleatoric noise), so this is what a perfect reader of the
    ECG could know about the label. Records drawn with their own labels
    (``simulate(labels=...)``) are not covered.

    Args:
      seed: the ``simulate`` seed (non-negative int).
      indices: record indices [m] (non-negative ints below 2**32).
      preset: ``"potassium"`` or ``"lvef"``.

    Returns:
      ``(y [m], effective [m])`` float32; ``y`` equals ``simulate``'s labels.
    """
    check_seed(seed)
    get_preset(preset)
    idx = np.asarray(indices)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer) or (idx.size and (
            idx.min() < 0 or idx.max() >= 2**32)):
        raise ValueError(f"indices: expected a 1-D array of record indices in [0, 2**32), "
                         f"got dtype {idx.dtype} shape {idx.shape}")
    y, eff = _effective_chunk(jax.random.key(int(seed)), jnp.asarray(idx, jnp.uint32), preset)
    return np.asarray(y), np.asarray(eff)
