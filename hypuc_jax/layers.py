"""Building blocks of the signal backbone (Flax NNX), channels last ``[batch, time, channels]``.

- :class:`GroupNorm`: ``nnx.GroupNorm`` computed as one multiply-add per
  element (same parameters and result), the normalisation of every block;
- :class:`ResidualBlock`: conv-norm-relu-conv-norm plus a (projected)
  shortcut, the unit :class:`hypuc_jax.models.ResNet1D` stacks.

GroupNorm, not BatchNorm: per-example statistics keep single- and
multi-device steps identical and the model free of mutable state.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from hypuc_jax._validation import is_int


class GroupNorm(nnx.GroupNorm):
    """``nnx.GroupNorm`` for channels-last ``x [batch, time, channels]``, as one
    multiply-add per element.

    Same parameters (``scale``, ``bias`` [channels]), statistics and result as
    ``nnx.GroupNorm`` with its default ``use_fast_variance`` (mean and
    E[x^2] - mean^2 over time and the channels of each group, in float32, or
    float64 for float64 inputs): like flax's, this one-pass variance loses
    precision when a group's mean is far from zero against its spread (~1e-2
    relative at |mean| / std = 100), and a group whose values square past
    float32's range (|x| ~1e19) has no statistics (its output is the bias, or
    NaN); inside the ResNet the stem's zero padding keeps the ratio small, and
    ``predict`` flags records beyond the training signals' range:
    the per-(example, channel) factor ``a = scale * rsqrt(var + eps)`` and
    offset ``b = bias - mean * a`` are formed on the small [batch, channels]
    statistics, so the full-size work is ``x * a + b`` forward and a matching
    single pass backward. On XLA:CPU this trains the ResNet ~10% faster than
    normalising ``(x - mean) * rsqrt(var + eps)`` at full size. Other input
    ranks, masks, ``use_fast_variance=False`` and ``axis_name`` use
    ``nnx.GroupNorm`` itself. Statistics are always over every axis but the
    batch: ``reduction_axes`` is refused. The output dtype is ``dtype``, or as in
    ``nnx.GroupNorm`` the promotion of the input and parameter dtypes.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.reduction_axes is not None:
            raise ValueError(f"reduction_axes: hypuc_jax.layers.GroupNorm reduces over every "
                             f"axis but the batch (leave it None), got {self.reduction_axes!r}")

    def __call__(self, x, *, mask=None):
        """Group-normalises ``x`` (one multiply-add per element at rank 3 without ``mask``).

        Args:
          x: [batch, time, channels] (other ranks: [batch, ..., channels], by
            ``nnx.GroupNorm``).
          mask: optional binary array broadcastable to ``x`` (last axis
            ``channels``), True where elements enter the mean and variance;
            given, ``nnx.GroupNorm`` computes the result.

        Returns:
          The normalised ``x``, same shape.
        """
        if (x.ndim != 3 or mask is not None or self.scale is None or self.bias is None
                or not self.use_fast_variance or self.axis_name is not None):
            return super().__call__(x, mask=mask)
        batch, time, channels = x.shape
        groups = self.num_groups
        ct = jnp.promote_types(x.dtype, jnp.float32)          # float64 stays (under x64)
        xg = x.astype(ct).reshape(batch, time, groups, channels // groups)  # batch 0 too
        mean = jnp.mean(xg, axis=(1, 3))                                  # [batch, groups]
        var = jnp.maximum(jnp.mean(jnp.square(xg), axis=(1, 3)) - jnp.square(mean), 0.0)
        inv = jax.lax.rsqrt(var + self.epsilon)
        scale = self.scale[...].astype(ct).reshape(groups, channels // groups)
        a = inv[:, :, None] * scale                                       # [batch, groups, c/g]
        b = self.bias[...].astype(ct) - (mean[:, :, None] * a).reshape(batch, channels)
        out = x.astype(ct) * a.reshape(batch, 1, channels) + b[:, None, :]
        return out.astype(self.dtype or jnp.promote_types(x.dtype, self.scale[...].dtype))


class ResidualBlock(nnx.Module):
    """Pre-add residual block: conv-norm-relu-conv-norm, + shortcut, relu.

    The first conv has stride ``stride``; when the stride is not 1 or the
    width changes, the shortcut is a 1x1 conv (stride ``stride``, no bias)
    followed by GroupNorm.
    """

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int, groups: int,
                 dtype, *, rngs: nnx.Rngs):
        if not is_int(kernel_size) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected an odd int >= 1 (an even kernel's "
                             f"'same' padding shifts the main path against the shortcut), "
                             f"got {kernel_size!r}")
        pad = [(kernel_size // 2, kernel_size // 2)]
        self.conv1 = nnx.Conv(cin, cout, (kernel_size,), strides=stride, padding=pad,
                              use_bias=False, dtype=dtype, rngs=rngs)
        self.norm1 = GroupNorm(cout, num_groups=min(groups, cout), epsilon=1e-5,
                                   dtype=dtype, rngs=rngs)
        self.conv2 = nnx.Conv(cout, cout, (kernel_size,), strides=1, padding=pad,
                              use_bias=False, dtype=dtype, rngs=rngs)
        self.norm2 = GroupNorm(cout, num_groups=min(groups, cout), epsilon=1e-5,
                                   dtype=dtype, rngs=rngs)
        if stride != 1 or cin != cout:
            self.proj = nnx.Conv(cin, cout, (1,), strides=stride, padding=[(0, 0)],
                                 use_bias=False, dtype=dtype, rngs=rngs)
            self.proj_norm = GroupNorm(cout, num_groups=min(groups, cout), epsilon=1e-5,
                                           dtype=dtype, rngs=rngs)
        else:
            self.proj = self.proj_norm = None

    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the block.

        Args:
          x: [batch, time, cin].

        Returns:
          [batch, time', cout], time' = ceil(time / stride).
        """
        h = jax.nn.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        skip = x if self.proj is None else self.proj_norm(self.proj(x))
        chex.assert_equal_shape([h, skip])
        return jax.nn.relu(h + skip)
