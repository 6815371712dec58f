"""Float64 numpy references for hypuc_jax.layers / hypuc_jax.models (test helper).

Written from the definitions (GroupNorm: Wu & He 2018; ResNet1D: the layer list
in its docstring), not from the JAX code, so that the tests compare against an
independent implementation. Everything is channels last, ``[batch, time, channels]``.
"""
import numpy as np


def group_norm(x, groups, scale, bias, eps):
    """GroupNorm forward: per example and group, statistics over time and the
    channels of the group, biased variance, ``(x - mean) / sqrt(var + eps)``,
    then the per-channel affine ``* scale + bias``.

    Returns ``(y, xhat, inv_std)``; ``xhat`` and ``inv_std`` (shape
    ``[batch, 1, groups, 1]``) are what :func:`group_norm_grad` needs.
    """
    x = np.asarray(x, np.float64)
    batch, time, channels = x.shape
    xg = x.reshape(batch, time, groups, channels // groups)
    mean = xg.mean(axis=(1, 3), keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=(1, 3), keepdims=True)          # biased
    inv_std = 1.0 / np.sqrt(var + eps)
    xhat = ((xg - mean) * inv_std).reshape(x.shape)
    y = xhat * np.asarray(scale, np.float64) + np.asarray(bias, np.float64)
    return y, xhat, inv_std


def group_norm_grad(dy, xhat, inv_std, groups, scale):
    """Analytic backward of :func:`group_norm` for an upstream gradient ``dy``.

    With ``g = dy * scale`` and means over the N elements of a group,
    ``dx = inv_std * (g - mean(g) - xhat * mean(g * xhat))``,
    ``dscale = sum_{batch,time} dy * xhat``, ``dbias = sum_{batch,time} dy``.
    """
    dy = np.asarray(dy, np.float64)
    batch, time, channels = dy.shape
    shape = (batch, time, groups, channels // groups)
    g = (dy * np.asarray(scale, np.float64)).reshape(shape)
    xh = xhat.reshape(shape)
    dx = inv_std * (g - g.mean(axis=(1, 3), keepdims=True)
                    - xh * (g * xh).mean(axis=(1, 3), keepdims=True))
    return dx.reshape(dy.shape), (dy * xhat).sum(axis=(0, 1)), dy.sum(axis=(0, 1))


def conv1d(x, kernel, stride):
    """Channels-last 1-D convolution (cross-correlation, as in PyTorch and
    Flax), no bias, symmetric zero padding ``k // 2`` on both sides:
    ``out[b, t, o] = sum_{j, c} xpad[b, t * stride + j, c] * kernel[j, c, o]``
    for ``t < (time + 2 * (k // 2) - k) // stride + 1``. ``kernel [k, cin, cout]``."""
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    k = kernel.shape[0]
    pad = k // 2
    xp = np.pad(x, ((0, 0), (pad, pad), (0, 0)))
    length = (x.shape[1] + 2 * pad - k) // stride + 1
    out = np.zeros((x.shape[0], length, kernel.shape[2]))
    for j in range(k):
        out += xp[:, j:j + stride * (length - 1) + 1:stride, :] @ kernel[j]
    return out


def _p(param):
    return np.asarray(param[...], np.float64)


def _gn(x, norm, width, groups):
    return group_norm(x, min(groups, width), _p(norm.scale), _p(norm.bias), 1e-5)[0]


def resnet1d(model, x, *, widths, blocks, kernel_size, stem_kernel, stem_stride, groups,
             sigma_min, head="gaussian"):
    """ResNet1D forward in float64 from the layer list of its docstring.

    Only the parameter VALUES are read from ``model`` (conv kernels, GroupNorm
    scale/bias, head kernel/bias); strides, kernel sizes, group counts, the
    shortcut rule and the order of the operations come from the arguments and
    the docstring. Returns ``(loc, scale)`` (``scale`` None for "point").
    """
    relu = lambda a: np.maximum(a, 0.0)
    assert _p(model.stem.kernel).shape[0] == stem_kernel
    h = relu(_gn(conv1d(x, _p(model.stem.kernel), stem_stride), model.stem_norm,
                 widths[0], groups))
    cin, i = widths[0], 0
    for s, (width, n_blocks) in enumerate(zip(widths, blocks)):
        for b in range(n_blocks):
            stride = 2 if (s > 0 and b == 0) else 1
            blk = model.blocks[i]
            assert _p(blk.conv1.kernel).shape == (kernel_size, cin, width)
            y = relu(_gn(conv1d(h, _p(blk.conv1.kernel), stride), blk.norm1, width, groups))
            y = _gn(conv1d(y, _p(blk.conv2.kernel), 1), blk.norm2, width, groups)
            if stride == 1 and cin == width:
                assert blk.proj is None
                skip = h
            else:
                assert _p(blk.proj.kernel).shape == (1, cin, width)
                skip = _gn(conv1d(h, _p(blk.proj.kernel), stride), blk.proj_norm, width, groups)
            h = relu(y + skip)
            cin, i = width, i + 1
    assert i == len(model.blocks)
    out = h.mean(axis=1) @ _p(model.out.dense.kernel) + _p(model.out.dense.bias)
    if head == "point":
        return out[:, 0], None
    return out[:, 0], np.logaddexp(0.0, out[:, 1]) + sigma_min       # softplus
