"""Probabilistic regression networks (Flax NNX).

Two backbones share one head:

- :class:`ResNet1D` for signals ``x [batch, time, leads]`` (multi-lead ECG);
- :class:`MLP` for tabular features ``x [batch, features]``.

Both return a :class:`Prediction` ``(loc [batch], scale [batch] or None)``:
head "gaussian" (``scale = softplus(raw) + sigma_min``, a standard
deviation), "laplace" (the same transform, the Laplace scale ``b``) or
"point" (``scale`` None, for the MSE / L1 / Huber / Balanced-MSE baselines).

Normalisation is :class:`hypuc_jax.layers.GroupNorm` (per example), not
BatchNorm: batch statistics would differ per device under data parallelism,
break the exact equivalence of the single-device and multi-device steps, and
add mutable state. With
``dropout=0`` (the default) a model holds only ``nnx.Param`` state, so
``nnx.split(model)`` gives a pure pytree for ``jax.jit`` / ``pmap``.

Balanced MSE with a learnable noise scale: pass ``noise_sigma_init`` and the
model owns ``log_noise_sigma`` (an ``nnx.Param``, trained with the rest);
``model.noise_sigma()`` returns ``exp(log_noise_sigma)`` (None without it).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hypuc_jax._validation import check_positive, is_int, is_real, plain_scalar
from hypuc_jax.layers import GroupNorm, ResidualBlock

__all__ = ["Prediction", "ResNet1D", "MLP", "create_model", "GroupNorm", "ResidualBlock",
           "HEADS", "MODEL_KINDS", "MODEL_OPTIONS"]

HEADS = ("gaussian", "laplace", "point")
MODEL_KINDS = ("resnet1d", "mlp", "auto")
_ACTIVATIONS = {"relu": jax.nn.relu, "gelu": jax.nn.gelu, "silu": jax.nn.silu, "tanh": jnp.tanh}
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
#: Size options accepted by :func:`create_model` for each kind.
MODEL_OPTIONS = {
    "resnet1d": ("widths", "blocks", "kernel_size", "stem_kernel", "stem_stride", "groups",
                 "dropout", "sigma_min", "noise_sigma_init", "dtype"),
    "mlp": ("hidden", "activation", "dropout", "sigma_min", "noise_sigma_init", "dtype"),
}


class Prediction(NamedTuple):
    """A predictive distribution per example (a pytree).

    Attributes:
      loc: location (mean of the Gaussian, median of the Laplace, the point
        prediction), shape ``[batch]``.
      scale: Gaussian standard deviation or Laplace scale ``b``, shape
        ``[batch]``, always ``>= sigma_min > 0``; None for a point head.
    """
    loc: jax.Array
    scale: jax.Array | None


def _positive(value, name: str) -> float:
    """``value`` as a float, refused unless a number whose float32 is finite and
    normal (>= 1.2e-38): the heads add it in float32 (1e-50 became 0, 1e39 inf)."""
    value = plain_scalar(value)
    if not is_real(value):
        raise ValueError(f"{name}: expected a number > 0, got {value!r}")
    check_positive(value, name)
    with np.errstate(over="ignore", under="ignore"):    # the error below says it
        f32 = np.float32(value)
    if not (np.isfinite(f32) and f32 >= np.finfo(np.float32).tiny):
        raise ValueError(f"{name}: expected a value within float32's normal range "
                         f"[1.2e-38, 3.4e38], got {value!r}")
    return float(value)


def _int_tuple(value, name: str) -> tuple[int, ...]:
    try:
        items = tuple(value) if not isinstance(value, str) else None
    except TypeError:                     # a scalar
        items = None
    if not items or not all(is_int(v) and v >= 1 for v in items):
        raise ValueError(f"{name}: expected a non-empty sequence of ints >= 1, got {value!r}")
    return tuple(int(v) for v in items)


def _odd_kernel(value, name: str) -> int:
    if not is_int(value) or value < 1 or value % 2 == 0:
        raise ValueError(f"{name}: expected an odd int >= 1 (symmetric padding), got {value!r}")
    return int(value)


class _Head(nnx.Module):
    """Dense layer from pooled features to a :class:`Prediction`, plus the
    optional learnable Balanced-MSE noise scale."""

    def __init__(self, features: int, head: str, sigma_min: float,
                 noise_sigma_init: float | None, dtype, *, rngs: nnx.Rngs):
        if head not in HEADS:
            raise ValueError(f"head: expected one of {', '.join(HEADS)}, got {head!r}")
        self.head = head
        self.sigma_min = _positive(sigma_min, "sigma_min")
        self.dense = nnx.Linear(features, 1 if head == "point" else 2, dtype=dtype, rngs=rngs)
        if noise_sigma_init is None:
            self.log_noise_sigma = None
        else:
            init = _positive(noise_sigma_init, "noise_sigma_init")
            self.log_noise_sigma = nnx.Param(jnp.asarray(math.log(init), jnp.float32))

    def __call__(self, h: jax.Array) -> Prediction:
        out = self.dense(h).astype(jnp.float32)                 # [batch, 1 or 2]
        chex.assert_rank(out, 2)
        if self.head == "point":
            return Prediction(out[:, 0], None)
        scale = jax.nn.softplus(out[:, 1]) + self.sigma_min
        return Prediction(out[:, 0], scale)


class _Regressor(nnx.Module):
    """Shared input check and noise-scale accessor of the two backbones."""

    input_shape: tuple[int, ...]
    out: _Head

    def noise_sigma(self) -> jax.Array | None:
        """The learnable Balanced-MSE noise scale ``exp(log_noise_sigma)``
        (a scalar), or None when the model was built without one."""
        if self.out.log_noise_sigma is None:
            return None
        return jnp.exp(self.out.log_noise_sigma[...])

    def _check_input(self, x: jax.Array) -> None:
        if not hasattr(x, "shape"):
            raise ValueError(f"x: expected an array [batch, "
                             f"{', '.join(map(str, self.input_shape))}], got a "
                             f"{type(x).__name__} (convert it with jnp.asarray)")
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"x: expected shape [batch, {', '.join(map(str, self.input_shape))}]"
                             f", got {tuple(x.shape)}")


class ResNet1D(_Regressor):
    """1-D residual CNN for ``x [batch, time, leads]`` (channels last).

    Layers, in order (``torch_equivalent``; PyTorch works channels first,
    ``[batch, leads, time]``, every conv ``bias=False`` except the head;
    all GroupNorm ``eps=1e-5``; ``p(k) = k // 2``)::

        stem:   Conv1d(leads, w0, stem_kernel, stride=stem_stride, padding=p(stem_kernel))
                GroupNorm(min(groups, w0), w0), ReLU
        stage s = 0..S-1 (width ws), block b = 0..blocks[s]-1:
                stride = 2 if (s > 0 and b == 0) else 1
                h = ReLU(GN(Conv1d(cin, ws, kernel_size, stride, padding=p(kernel_size))(x)))
                h = GN(Conv1d(ws, ws, kernel_size, 1, padding=p(kernel_size))(h))
                skip = x if (stride == 1 and cin == ws)
                       else GN(Conv1d(cin, ws, 1, stride, padding=0)(x))
                x = ReLU(h + skip)
        pool:   mean over time -> [batch, w_last]
        (Dropout(dropout) if dropout > 0)
        head:   Linear(w_last, 2) -> loc = out[:, 0],
                scale = softplus(out[:, 1]) + sigma_min   (Linear(w_last, 1), no scale, for "point")

    Init differs from PyTorch's default (Flax: lecun-normal kernels, zero
    biases); copy the weights across for an exact comparison (a Flax conv
    kernel ``[k, cin, cout]`` is ``torch_weight.permute(2, 1, 0)``).

    Args:
      input_shape: ``(time, leads)`` of one example.
      head: "gaussian", "laplace" or "point".
      widths: channels of each stage; one stage per entry, every stage but
        the first halves the time length.
      blocks: residual blocks per stage (same length as ``widths``).
      kernel_size: odd kernel size of the block convs.
      stem_kernel: odd kernel size of the stem conv.
      stem_stride: stride of the stem conv.
      groups: GroupNorm groups (capped by the width).
      dropout: dropout rate before the head (0 disables it; a model with
        dropout holds an RNG stream, so use ``model.eval()`` for inference).
      sigma_min: lower bound added to the softplus scale.
      noise_sigma_init: initial value of a learnable Balanced-MSE noise
        scale, or None for none.
      dtype: compute dtype "float32" or "bfloat16" (params stay float32).
      rngs: ``nnx.Rngs`` (streams "params" and, with dropout, "dropout").

    Raises:
      ValueError: an option out of range, or an ``input_shape`` the network
        does not fit (the message names the option).
    """

    def __init__(self, input_shape: Sequence[int], head: str = "gaussian", *,
                 widths: Sequence[int] = (32, 64, 128), blocks: Sequence[int] = (1, 1, 1),
                 kernel_size: int = 7, stem_kernel: int = 15, stem_stride: int = 2,
                 groups: int = 8, dropout: float = 0.0, sigma_min: float = 1e-3,
                 noise_sigma_init: float | None = None, dtype: str = "float32",
                 rngs: nnx.Rngs):
        input_shape = _int_tuple(input_shape, "input_shape")
        if len(input_shape) != 2:
            raise ValueError(f"input_shape: ResNet1D expects (time, leads), got {input_shape}")
        widths, blocks = _int_tuple(widths, "widths"), _int_tuple(blocks, "blocks")
        if len(blocks) != len(widths):
            raise ValueError(f"blocks: expected one entry per stage of widths {widths}, "
                             f"got {blocks}")
        kernel_size = _odd_kernel(kernel_size, "kernel_size")
        stem_kernel = _odd_kernel(stem_kernel, "stem_kernel")
        if not is_int(stem_stride) or stem_stride < 1:
            raise ValueError(f"stem_stride: expected an int >= 1, got {stem_stride!r}")
        if not is_int(groups) or groups < 1:
            raise ValueError(f"groups: expected an int >= 1, got {groups!r}")
        uneven = [w for w in widths if w % min(groups, w)]
        if uneven:
            raise ValueError(f"groups: expected a number of GroupNorm groups that divides every "
                             f"width (capped at the width), got {groups} for widths {uneven}")
        dropout = _dropout(dropout)
        dt = _dtype(dtype)
        time, leads = input_shape
        _check_time_fits(time, stem_kernel, stem_stride, kernel_size, len(widths))
        self.input_shape = input_shape
        pad = [(stem_kernel // 2, stem_kernel // 2)]
        self.stem = nnx.Conv(leads, widths[0], (stem_kernel,), strides=stem_stride, padding=pad,
                             use_bias=False, dtype=dt, rngs=rngs)
        self.stem_norm = GroupNorm(widths[0], num_groups=min(groups, widths[0]),
                                       epsilon=1e-5, dtype=dt, rngs=rngs)
        layers, cin = [], widths[0]
        for s, (width, n_blocks) in enumerate(zip(widths, blocks)):
            for b in range(n_blocks):
                stride = 2 if (s > 0 and b == 0) else 1
                layers.append(ResidualBlock(cin, width, kernel_size, stride, groups, dt,
                                            rngs=rngs))
                cin = width
        self.blocks = nnx.List(layers)
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        self.out = _Head(cin, head, sigma_min, noise_sigma_init, dt, rngs=rngs)

    def features(self, x: jax.Array) -> jax.Array:
        """The pooled features the head reads (before dropout).

        Args: x ``[batch, time, leads]``. Returns: ``[batch, widths[-1]]``.
        """
        self._check_input(x)
        h = jax.nn.relu(self.stem_norm(self.stem(x)))
        for block in self.blocks:
            h = block(h)
        h = jnp.mean(h, axis=1)                                   # [batch, width]
        chex.assert_rank(h, 2)
        return h

    def __call__(self, x: jax.Array) -> Prediction:
        """Args: x ``[batch, time, leads]``. Returns: :class:`Prediction`."""
        h = self.features(x)
        if self.dropout is not None:
            h = self.dropout(h)
        pred = self.out(h)
        chex.assert_shape(pred.loc, (x.shape[0],))
        return pred


class MLP(_Regressor):
    """Multi-layer perceptron for tabular ``x [batch, features]``.

    ``torch_equivalent``: ``[Linear(d_in, h), act, Dropout] * len(hidden)``,
    then the head ``Linear(h_last, 2)`` (1 for "point") with
    ``scale = softplus(out[:, 1]) + sigma_min``.

    Args:
      input_shape: ``(features,)`` of one example.
      head: "gaussian", "laplace" or "point".
      hidden: hidden layer sizes (may be empty: a linear model).
      activation: "relu", "gelu", "silu" or "tanh".
      dropout: dropout rate after each hidden layer (0 disables it).
      sigma_min, noise_sigma_init, dtype, rngs: as in :class:`ResNet1D`.

    Raises:
      ValueError: an option out of range or an ``input_shape`` not ``(features,)``.
    """

    def __init__(self, input_shape: Sequence[int], head: str = "gaussian", *,
                 hidden: Sequence[int] = (64, 64), activation: str = "relu",
                 dropout: float = 0.0, sigma_min: float = 1e-3,
                 noise_sigma_init: float | None = None, dtype: str = "float32",
                 rngs: nnx.Rngs):
        input_shape = _int_tuple(input_shape, "input_shape")
        if len(input_shape) != 1:
            raise ValueError(f"input_shape: MLP expects (features,), got {input_shape}")
        hidden = () if isinstance(hidden, (tuple, list)) and len(hidden) == 0 else _int_tuple(
            hidden, "hidden")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation: expected one of {', '.join(_ACTIVATIONS)}, "
                             f"got {activation!r}")
        dropout = _dropout(dropout)
        dt = _dtype(dtype)
        self.input_shape = input_shape
        self.activation = activation
        sizes = (input_shape[0],) + hidden
        self.layers = nnx.List([nnx.Linear(a, b, dtype=dt, rngs=rngs)
                                for a, b in zip(sizes[:-1], sizes[1:])])
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        self.out = _Head(sizes[-1], head, sigma_min, noise_sigma_init, dt, rngs=rngs)

    def features(self, x: jax.Array) -> jax.Array:
        """The last hidden layer's output, which the head reads (dropout
        applies in training mode: call ``model.eval()`` for fixed features).

        Args: x ``[batch, features]``. Returns: ``[batch, hidden[-1]]``
        (``x`` itself for a linear model, ``hidden=()``).
        """
        self._check_input(x)
        act = _ACTIVATIONS[self.activation]
        h = x
        for layer in self.layers:
            h = act(layer(h))
            if self.dropout is not None:
                h = self.dropout(h)
        return h

    def __call__(self, x: jax.Array) -> Prediction:
        """Args: x ``[batch, features]``. Returns: :class:`Prediction`."""
        pred = self.out(self.features(x))
        chex.assert_shape(pred.loc, (x.shape[0],))
        return pred


def _dropout(rate) -> float:
    rate = plain_scalar(rate)
    if not is_real(rate) or not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout: expected a rate in [0, 1), got {rate!r}")
    return float(rate)


def _dtype(name: str):
    if name not in _DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


def _check_time_fits(time: int, stem_kernel: int, stem_stride: int, kernel_size: int,
                     n_stages: int) -> None:
    """Raises unless every conv sees at least its kernel size of signal."""
    if time < stem_kernel:
        raise ValueError(f"stem_kernel: {stem_kernel} is longer than the signal "
                         f"(time length {time})")
    length = -(-time // stem_stride)                 # conv output with padding k // 2
    for stage in range(n_stages):
        if stage > 0:
            length = -(-length // 2)
        if length < kernel_size:
            raise ValueError(
                f"widths: {n_stages} stages do not fit a time length of {time}: stage "
                f"{stage} sees {length} samples, fewer than kernel_size {kernel_size}; "
                "use fewer stages, a smaller kernel_size or stem_stride, or a longer signal")


def create_model(kind: str, input_shape: Sequence[int], head: str, *, rngs: nnx.Rngs,
                 **size_kwargs: Any) -> ResNet1D | MLP:
    """Builds the network for one example shape.

    Args:
      kind: "resnet1d", "mlp" or "auto" (ResNet1D for a 2-D example shape
        ``(time, leads)``, MLP for a 1-D ``(features,)``).
      input_shape: shape of ONE example (no batch axis).
      head: "gaussian", "laplace" or "point" (see ``losses.head_for_loss``).
      rngs: ``nnx.Rngs``; the same seed gives the same parameters.
      **size_kwargs: options of the chosen class, names in
        :data:`MODEL_OPTIONS` (e.g. ``widths``, ``blocks``, ``kernel_size``
        for resnet1d; ``hidden``, ``activation`` for mlp).

    Returns:
      A :class:`ResNet1D` or :class:`MLP`.

    Raises:
      ValueError: unknown ``kind`` / ``head`` / option name, an option out
        of range, or an ``input_shape`` the model does not fit; the message
        names the offending key.
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind: expected one of {', '.join(MODEL_KINDS)}, got {kind!r}")
    shape = tuple(input_shape)
    if kind == "auto":
        if len(shape) not in (1, 2):
            raise ValueError(f"input_shape: expected (time, leads) or (features,), got {shape}")
        kind = "resnet1d" if len(shape) == 2 else "mlp"
    unknown = sorted(set(size_kwargs) - set(MODEL_OPTIONS[kind]))
    if unknown:
        raise ValueError(f"{unknown[0]}: not an option of model kind {kind!r}; "
                         f"expected some of {', '.join(MODEL_OPTIONS[kind])}")
    cls = ResNet1D if kind == "resnet1d" else MLP
    return cls(shape, head, rngs=rngs, **size_kwargs)
