"""Always-on float64 numpy references for the signal backbone (no PyTorch needed).

tests/test_models.py checks GroupNorm and ResNet1D against PyTorch too, but
only where torch is installed; these tests compare the same code with the
numpy implementations in tests/np_models.py, written from the definitions:

- GroupNorm forward (per example, statistics over time x the channels of a
  group, biased variance, eps, then scale / bias) and its analytic backward,
  itself checked against central finite differences;
- the ResNet1D forward pass from the layer list of its docstring (channels-last
  conv with padding k // 2, GroupNorm, ReLU, residual blocks with a projection
  shortcut, mean pool, linear head, softplus + sigma_min), reading only the
  parameter values of the NNX model.

The model runs in float32, the references in float64: agreement to ~1e-4
relative is float32 rounding through a few conv / norm layers.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hypuc_jax import models

import np_models


def test_numpy_conv1d_reference_is_a_strided_padded_correlation():
    """The reference conv against np.correlate on the zero-padded signal, one
    channel pair at a time (stride s keeps every s-th output)."""
    rng = np.random.default_rng(0)
    x, kernel = rng.normal(size=(2, 11, 3)), rng.normal(size=(5, 3, 4))
    for stride in (1, 2, 3):
        out = np_models.conv1d(x, kernel, stride)
        assert out.shape == (2, -(-11 // stride), 4)
        for b in range(2):
            for o in range(4):
                want = sum(np.correlate(np.pad(x[b, :, c], 2), kernel[:, c, o], "valid")
                           for c in range(3))
                np.testing.assert_allclose(out[b, :, o], want[::stride], rtol=1e-12, atol=1e-12)


def test_numpy_group_norm_backward_matches_finite_differences():
    """The analytic numpy backward (the gradient reference below) against central
    differences of the numpy forward, in float64."""
    rng = np.random.default_rng(1)
    x, dy = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
    scale, bias = rng.normal(size=4), rng.normal(size=4)
    loss = lambda x, s, b: np.sum(dy * np_models.group_norm(x, 2, s, b, 1e-5)[0])
    _, xhat, inv_std = np_models.group_norm(x, 2, scale, bias, 1e-5)
    grads = np_models.group_norm_grad(dy, xhat, inv_std, 2, scale)
    args, h = [x, scale, bias], 1e-6
    for i, grad in enumerate(grads):
        fd = np.zeros_like(args[i])
        for idx in np.ndindex(args[i].shape):
            up, down = [a.copy() for a in args], [a.copy() for a in args]
            up[i][idx] += h
            down[i][idx] -= h
            fd[idx] = (loss(*up) - loss(*down)) / (2 * h)
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("offset,groups", [(0.0, 4), (10.0, 4), (0.0, 1), (3.0, 12)])
def test_group_norm_matches_numpy_forward_and_backward(offset, groups):
    """models.GroupNorm (the one-multiply-add form, float32) against the float64
    numpy GroupNorm: the output, and jax.grad of sum(w * GroupNorm(x)) w.r.t. x,
    scale and bias against the analytic numpy backward with dy = w."""
    rng = np.random.default_rng(0)
    x = (offset + 2.0 * rng.normal(size=(3, 50, 12))).astype(np.float32)
    w = rng.normal(size=x.shape).astype(np.float32)
    scale = rng.normal(size=12).astype(np.float32)
    bias = rng.normal(size=12).astype(np.float32)
    gn = models.GroupNorm(12, num_groups=groups, epsilon=1e-5, rngs=nnx.Rngs(0))
    gn.scale[...], gn.bias[...] = jnp.asarray(scale), jnp.asarray(bias)
    graphdef, state = nnx.split(gn)

    def f(x, state):
        return jnp.sum(jnp.asarray(w) * nnx.merge(graphdef, state)(x))

    out = np.asarray(gn(jnp.asarray(x)))
    gx, gstate = jax.grad(f, argnums=(0, 1))(jnp.asarray(x), state)
    ref, xhat, inv_std = np_models.group_norm(x, groups, scale, bias, 1e-5)
    ref_grads = np_models.group_norm_grad(w, xhat, inv_std, groups, scale)
    # float32 E[x^2] - mean^2 loses ~offset^2 / var ulps: the tolerance grows with offset.
    tol = dict(rtol=1e-4, atol=1e-4 * (1 + offset))
    np.testing.assert_allclose(out, ref, **tol)
    for got, want in zip((gx, gstate["scale"][...], gstate["bias"][...]), ref_grads):
        np.testing.assert_allclose(np.asarray(got), want, **tol)


_CONFIGS = {
    # 3 stages: a projection for a width change + stride, an identity block, and a
    # projection for the stride alone (8 -> 8); odd time length (ceil at stride 2).
    "three_stages": dict(input_shape=(41, 3), widths=(4, 8, 8), blocks=(1, 2, 1), kernel_size=5,
                         stem_kernel=7, stem_stride=2, groups=2),
    # Two identity blocks in stage 0, stem stride 3, groups capped at the width 2.
    "stride3_capped_groups": dict(input_shape=(37, 2), widths=(2, 4), blocks=(2, 1),
                                  kernel_size=3, stem_kernel=5, stem_stride=3, groups=4),
}


@pytest.mark.parametrize("config,head", [("three_stages", "gaussian"), ("three_stages", "point"),
                                         ("stride3_capped_groups", "laplace")])
def test_resnet_matches_numpy_reference(config, head):
    """ResNet1D (float32) against the float64 numpy forward of its docstring's layer
    list, on random input, with every parameter moved off its init (GroupNorm scale
    1 / bias 0 and a zero head bias would hide a missing affine or bias)."""
    opts = dict(_CONFIGS[config])
    shape = opts.pop("input_shape")
    model = models.create_model("resnet1d", shape, head, rngs=nnx.Rngs(4), sigma_min=0.05,
                                **opts)
    rng = np.random.default_rng(4)
    state = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(
        lambda v: v + jnp.asarray(0.3 * rng.normal(size=v.shape), v.dtype), state))
    x = rng.normal(size=(4,) + shape).astype(np.float32)
    loc, scale = np_models.resnet1d(model, x, head=head, sigma_min=0.05, **opts)
    pred = model(jnp.asarray(x))
    assert np.ptp(loc) > 0.1                        # the outputs depend on the input
    np.testing.assert_allclose(pred.loc, loc, rtol=1e-4, atol=1e-5)
    if head == "point":
        assert pred.scale is None
    else:
        np.testing.assert_allclose(pred.scale, scale, rtol=1e-4, atol=1e-5)


def _np_group_norm(x, groups, eps=1e-6):
    """Two-pass float64 group normalisation of x [batch, time, channels] (unit scale)."""
    b, t, c = x.shape
    xg = x.reshape(b, t, groups, c // groups)
    mean = xg.mean(axis=(1, 3), keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=(1, 3), keepdims=True)
    return ((xg - mean) / np.sqrt(var + eps)).reshape(b, t, c)


def test_group_norm_takes_an_empty_batch_and_keeps_float64():
    # batch 0 raised ZeroDivisionError in the reshape; float64 inputs under x64 were
    # computed in float32 (an error of 5 at an offset of 1000)
    import subprocess
    import sys
    from hypuc_jax.layers import GroupNorm
    gn = GroupNorm(8, num_groups=4, rngs=nnx.Rngs(0))
    assert gn(jnp.zeros((0, 20, 8))).shape == (0, 20, 8)
    x = np.random.default_rng(0).normal(size=(3, 50, 8)) + 1000.0
    code = ("import sys, jax; jax.config.update('jax_enable_x64', True)\n"
            "import numpy as np, jax.numpy as jnp; from flax import nnx\n"
            "from hypuc_jax.layers import GroupNorm\n"
            "x = np.load(sys.argv[1])\n"
            "out = GroupNorm(8, num_groups=4, rngs=nnx.Rngs(0))(jnp.asarray(x))\n"
            "assert out.dtype == jnp.float64, out.dtype\n"
            "np.save(sys.argv[2], np.asarray(out))")
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        np.save(f"{d}/x.npy", x)
        subprocess.run([sys.executable, "-c", code, f"{d}/x.npy", f"{d}/out.npy"], check=True,
                       capture_output=True)
        np.testing.assert_allclose(np.load(f"{d}/out.npy"), _np_group_norm(x, 4), atol=1e-4)


def test_group_norm_refuses_reduction_axes():
    """The fused path reduces over time and the group's channels whatever
    ``reduction_axes`` said (and nnx.GroupNorm mis-broadcasts other axes at rank 3)."""
    from hypuc_jax.layers import GroupNorm
    with pytest.raises(ValueError, match=r"reduction_axes: .* got \(-1,\)"):
        GroupNorm(8, num_groups=2, reduction_axes=(-1,), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("kernel_size", [4, 0, 2.0, True])
def test_residual_block_refuses_a_kernel_that_is_not_odd(kernel_size):
    """An even kernel's 'same' padding shifts the main path against the shortcut (a
    shape AssertionError at the first call); refused when the block is built."""
    from hypuc_jax.layers import ResidualBlock
    with pytest.raises(ValueError, match=f"kernel_size: expected an odd int >= 1.*got {kernel_size!r}"):
        ResidualBlock(4, 8, kernel_size, 2, 4, jnp.float32, rngs=nnx.Rngs(0))
    assert ResidualBlock(4, 8, np.int64(5), 2, 4, jnp.float32, rngs=nnx.Rngs(0)).conv1.kernel_size == (5,)
