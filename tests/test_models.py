"""Tests for hypuc_jax.models: shapes, heads, transforms, references, bad input."""
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings, strategies as st

from hypuc_jax import losses, models

import np_models

SMALL = dict(widths=(4, 8), blocks=(1, 2), kernel_size=5, stem_kernel=7, groups=2)
SIG_SHAPE = (40, 3)


def _signal(n=5, shape=SIG_SHAPE, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n,) + shape), jnp.float32)


def _leaves(model):
    return jax.tree.leaves(nnx.state(model, nnx.Param))


@pytest.mark.parametrize("head", models.HEADS)
@pytest.mark.parametrize("kind,shape,opts", [("resnet1d", SIG_SHAPE, SMALL),
                                             ("mlp", (6,), dict(hidden=(8, 8)))])
def test_output_shapes_and_heads(kind, shape, opts, head):
    model = models.create_model(kind, shape, head, rngs=nnx.Rngs(0), **opts)
    pred = model(_signal(5, shape))
    assert isinstance(pred, models.Prediction)
    assert pred.loc.shape == (5,) and pred.loc.dtype == jnp.float32
    if head == "point":
        assert pred.scale is None
    else:
        assert pred.scale.shape == (5,)
        assert np.all(np.asarray(pred.scale) >= 1e-3)


def test_auto_kind_picks_backbone():
    assert isinstance(models.create_model("auto", SIG_SHAPE, "gaussian", rngs=nnx.Rngs(0), **SMALL),
                      models.ResNet1D)
    assert isinstance(models.create_model("auto", (7,), "gaussian", rngs=nnx.Rngs(0)), models.MLP)


def test_scale_floor_is_sigma_min_and_positive():
    model = models.create_model("mlp", (4,), "gaussian", rngs=nnx.Rngs(1), hidden=(8,),
                                sigma_min=0.05)
    # Drive the raw scale output to -1e4: softplus vanishes and scale == sigma_min.
    model.out.dense.bias[...] = jnp.array([0.0, -1e4])
    model.out.dense.kernel[...] = jnp.zeros_like(model.out.dense.kernel[...])
    pred = model(jnp.ones((3, 4)))
    np.testing.assert_array_equal(pred.scale, np.float32(0.05))
    assert np.all(np.asarray(pred.scale) > 0)


_MLP_LAPLACE = models.create_model("mlp", (5,), "laplace", rngs=nnx.Rngs(2), hidden=(16,),
                                   activation="tanh", sigma_min=0.01)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2 ** 16), magnitude=st.sampled_from([1e-3, 1.0, 1e3, 1e5]))
def test_scale_above_sigma_min_for_any_input(seed, magnitude):
    model = _MLP_LAPLACE
    x = jnp.asarray(np.random.default_rng(seed).normal(scale=magnitude, size=(8, 5)), jnp.float32)
    pred = model(x)
    assert np.all(np.isfinite(pred.scale)) and np.all(np.asarray(pred.scale) >= 0.01)



def test_mlp_matches_numpy_forward():
    model = models.create_model("mlp", (5,), "gaussian", rngs=nnx.Rngs(3), hidden=(7, 4),
                                activation="relu", sigma_min=0.02)
    x = np.random.default_rng(3).normal(size=(6, 5)).astype(np.float32)
    h = x.astype(np.float64)
    for layer in model.layers:
        h = np.maximum(h @ np.asarray(layer.kernel[...]) + np.asarray(layer.bias[...]), 0.0)
    out = h @ np.asarray(model.out.dense.kernel[...]) + np.asarray(model.out.dense.bias[...])
    pred = model(jnp.asarray(x))
    np.testing.assert_allclose(pred.loc, out[:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred.scale, np.logaddexp(0.0, out[:, 1]) + 0.02,
                               rtol=1e-5, atol=1e-6)


def _matmul_operand_dtypes(fn, *args):
    """Operand dtypes of every conv_general_dilated / dot_general in the jaxpr of
    ``fn(*args)``, nested jaxprs (pjit, custom_jvp...) included."""
    found = set()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
                found.add((eqn.primitive.name, tuple(str(v.aval.dtype) for v in eqn.invars)))
            for param in eqn.params.values():
                for sub in param if isinstance(param, (tuple, list)) else (param,):
                    if isinstance(sub, jax.extend.core.ClosedJaxpr):
                        walk(sub.jaxpr)
                    elif isinstance(sub, jax.extend.core.Jaxpr):
                        walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


@pytest.mark.parametrize("kind,shape,opts,prims", [
    ("mlp", (5,), dict(hidden=(16,)), {"dot_general"}),
    ("resnet1d", SIG_SHAPE, SMALL, {"conv_general_dilated", "dot_general"})])
def test_bfloat16_compute_keeps_float32_params_and_outputs(kind, shape, opts, prims):
    make = lambda dtype: models.create_model(kind, shape, "gaussian", rngs=nnx.Rngs(3),
                                             dtype=dtype, **opts)
    low, full = make("bfloat16"), make("float32")
    assert all(v.dtype == jnp.float32 for v in _leaves(low))
    x = _signal(4, shape, seed=1)
    a, b = low(x), full(x)
    assert a.loc.dtype == jnp.float32 and a.scale.dtype == jnp.float32
    np.testing.assert_allclose(a.loc, b.loc, rtol=0.05, atol=0.05)
    np.testing.assert_allclose(a.scale, b.scale, rtol=0.05, atol=0.05)
    # The compute really is bfloat16 (an ignored dtype would pass the checks above):
    # every matmul / conv takes bf16 operands, and the result moves off the float32 one.
    assert _matmul_operand_dtypes(lambda v: low(v), x) == {
        (p, ("bfloat16", "bfloat16")) for p in prims}
    assert {p for p, _ in _matmul_operand_dtypes(lambda v: full(v), x)} == prims
    # bf16 rounding (2^-9 relative) moves loc by ~1e-3; float32 reordering alone by ~1e-7.
    assert np.max(np.abs(np.asarray(a.loc) - np.asarray(b.loc))) > 1e-5


@pytest.mark.parametrize("offset", [0.0, 10.0])
def test_group_norm_matches_torch_forward_and_backward(offset):
    """models.GroupNorm (the one-multiply-add form) against PyTorch's
    group_norm in float64, values and gradients of x, scale and bias (the always-on
    numpy twin is in tests/test_models_numpy.py)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = (offset + 2.0 * rng.normal(size=(3, 50, 12))).astype(np.float32)
    w = rng.normal(size=x.shape).astype(np.float32)
    gn = models.GroupNorm(12, num_groups=4, epsilon=1e-5, rngs=nnx.Rngs(0))
    gn.scale[...] = jnp.asarray(rng.normal(size=12), jnp.float32)
    gn.bias[...] = jnp.asarray(rng.normal(size=12), jnp.float32)

    graphdef, state = nnx.split(gn)

    def f(x, state):
        return jnp.sum(jnp.asarray(w) * nnx.merge(graphdef, state)(x))

    scale0, bias0 = gn.scale[...], gn.bias[...]
    out = np.asarray(gn(jnp.asarray(x)))
    gx, gstate = jax.grad(f, argnums=(0, 1))(jnp.asarray(x), state)
    grads = (gx, gstate["scale"][...], gstate["bias"][...])
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ts = torch.tensor(np.asarray(scale0), dtype=torch.float64, requires_grad=True)
    tb = torch.tensor(np.asarray(bias0), dtype=torch.float64, requires_grad=True)
    ref = torch.nn.functional.group_norm(tx.permute(0, 2, 1), 4, ts, tb, eps=1e-5).permute(0, 2, 1)
    (ref * torch.tensor(w, dtype=torch.float64)).sum().backward()
    tol = dict(rtol=1e-4, atol=1e-4 * (1 + offset))
    np.testing.assert_allclose(out, ref.detach().numpy(), **tol)
    for got, want in zip(grads, (tx.grad, ts.grad, tb.grad)):
        np.testing.assert_allclose(np.asarray(got), want.numpy(), **tol)


def test_resnet_matches_torch_equivalent():
    """The layer list in ResNet1D's docstring, built in PyTorch with the same
    weights, gives the same outputs (the reference for the benchmark port; the
    always-on numpy twin is in tests/test_models_numpy.py)."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    model = models.create_model("resnet1d", SIG_SHAPE, "gaussian", rngs=nnx.Rngs(4),
                                stem_stride=2, sigma_min=1e-3, **SMALL)
    t = lambda a: torch.tensor(np.asarray(a[...]), dtype=torch.float64)

    def conv(c, k, stride):
        cin, cout = c.kernel.shape[1], c.kernel.shape[2]
        m = nn.Conv1d(cin, cout, k, stride=stride, padding=k // 2, bias=False).double()
        m.weight.data = t(c.kernel).permute(2, 1, 0).contiguous()
        return m

    def gn(g, groups):
        m = nn.GroupNorm(groups, g.scale.shape[0], eps=1e-5).double()
        m.weight.data, m.bias.data = t(g.scale), t(g.bias)
        return m

    g = lambda c: min(SMALL["groups"], c)
    x = np.asarray(_signal(4, SIG_SHAPE, seed=4), np.float64)
    h = torch.tensor(x).permute(0, 2, 1)                     # [batch, leads, time]
    h = torch.relu(gn(model.stem_norm, g(4))(conv(model.stem, 7, 2)(h)))
    strides = [1, 2, 1]                      # stage 0: 1 block; stage 1: 2 blocks
    for block, stride in zip(model.blocks, strides):
        w = block.conv1.kernel.shape[2]
        y = torch.relu(gn(block.norm1, g(w))(conv(block.conv1, 5, stride)(h)))
        y = gn(block.norm2, g(w))(conv(block.conv2, 5, 1)(y))
        if block.proj is None:
            skip = h
        else:
            skip = gn(block.proj_norm, g(w))(conv(block.proj, 1, stride)(h))
        h = torch.relu(y + skip)
    lin = nn.Linear(8, 2).double()
    lin.weight.data = t(model.out.dense.kernel).T.contiguous()
    lin.bias.data = t(model.out.dense.bias)
    out = lin(h.mean(dim=2)).detach().numpy()
    pred = model(jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(pred.loc, out[:, 0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pred.scale, np.logaddexp(0.0, out[:, 1]) + 1e-3,
                               rtol=1e-4, atol=1e-5)


def test_deterministic_init():
    make = lambda seed: models.create_model("resnet1d", SIG_SHAPE, "gaussian",
                                            rngs=nnx.Rngs(seed), **SMALL)
    a, b, c = _leaves(make(7)), _leaves(make(7)), _leaves(make(8))
    assert len(a) == len(b) and all(np.array_equal(u, v) for u, v in zip(a, b))
    assert any(not np.array_equal(u, v) for u, v in zip(a, c))


def test_jax_jit_with_split_merge_and_grad():
    model = models.create_model("resnet1d", SIG_SHAPE, "gaussian", rngs=nnx.Rngs(5), **SMALL)
    x, y = _signal(6), jnp.linspace(-1, 1, 6)
    graphdef, params = nnx.split(model, nnx.Param)

    @jax.jit
    def loss_fn(params, x, y):
        pred = nnx.merge(graphdef, params)(x)
        num, den = losses.weighted_sums(losses.gaussian_nll(pred.loc, pred.scale, y), jnp.ones(6))
        return num / den

    eager = model(x)
    np.testing.assert_allclose(nnx.merge(graphdef, params)(x).loc, eager.loc, rtol=1e-6)
    value, grads = jax.jit(jax.value_and_grad(loss_fn))(params, x, y)
    np.testing.assert_allclose(value, loss_fn(params, x, y), rtol=1e-6)
    want = np.mean(losses.gaussian_nll(eager.loc, eager.scale, y))
    np.testing.assert_allclose(value, want, rtol=1e-5)
    g = jax.tree.leaves(grads)
    assert len(g) == len(_leaves(model)) and all(np.all(np.isfinite(v)) for v in g)
    assert any(np.any(v != 0) for v in g)


def test_nnx_jit_train_step_learns_noise_sigma():
    model = models.create_model("mlp", (3,), "point", rngs=nnx.Rngs(6), hidden=(8,),
                                noise_sigma_init=0.5)
    assert isinstance(model.out.log_noise_sigma, nnx.Param)
    np.testing.assert_allclose(model.noise_sigma(), 0.5, rtol=1e-6)
    opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    x = jnp.asarray(np.random.default_rng(6).normal(size=(16, 3)), jnp.float32)
    y = x.sum(axis=1)

    @nnx.jit
    def step(model, opt, x, y):
        def loss_fn(model):
            pred = model(x)
            return losses.bmc(pred.loc, y, model.noise_sigma()).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss, grads

    before = float(model.noise_sigma())
    loss, grads = step(model, opt, x, y)
    assert np.isfinite(loss) and float(grads.out.log_noise_sigma[...]) != 0.0
    assert float(model.noise_sigma()) != before
    assert models.create_model("mlp", (3,), "point", rngs=nnx.Rngs(6)).noise_sigma() is None


def test_dropout_train_vs_eval():
    model = models.create_model("mlp", (4,), "gaussian", rngs=nnx.Rngs(9), hidden=(64,),
                                dropout=0.5)
    x = jnp.ones((2, 4))
    assert not np.allclose(model(x).loc, model(x).loc)
    model.eval()
    np.testing.assert_array_equal(model(x).loc, model(x).loc)


def test_time_fit_boundary():
    # stem stride 2 then stage stride 2: 33 -> 17 -> 9 -> 5 samples fit kernel 5, 32 -> 4 does not.
    opts = dict(widths=(4, 4, 4), blocks=(1, 1, 1), kernel_size=5, stem_kernel=5, groups=1)
    ok = models.create_model("resnet1d", (33, 2), "point", rngs=nnx.Rngs(0), **opts)
    assert ok(jnp.ones((1, 33, 2))).loc.shape == (1,)
    with pytest.raises(ValueError, match="widths: 3 stages do not fit a time length of 32"):
        models.create_model("resnet1d", (32, 2), "point", rngs=nnx.Rngs(0), **opts)
    with pytest.raises(ValueError, match="stem_kernel"):
        models.create_model("resnet1d", (4, 2), "point", rngs=nnx.Rngs(0), **opts)


@pytest.mark.parametrize("kind,shape,opts,key", [
    ("resnet1d", (100,), {}, "input_shape"),
    ("mlp", (10, 3), {}, "input_shape"),
    ("auto", (2, 3, 4), {}, "input_shape"),
    ("mlp", (5,), {"widths": (3,)}, "widths"),
    ("resnet1d", SIG_SHAPE, {**SMALL, "kernel_size": 4}, "kernel_size"),
    ("resnet1d", SIG_SHAPE, {**SMALL, "blocks": (1,)}, "blocks"),
    ("resnet1d", SIG_SHAPE, {**SMALL, "widths": ()}, "widths"),
    ("resnet1d", SIG_SHAPE, {**SMALL, "dropout": 1.0}, "dropout"),
    ("mlp", (5,), {"sigma_min": 0.0}, "sigma_min"),
    ("mlp", (5,), {"sigma_min": 1e-50}, "sigma_min"),       # 0 in float32: scale 0
    ("mlp", (5,), {"sigma_min": 1e39}, "sigma_min"),        # inf in float32
    ("mlp", (5,), {"activation": "swish"}, "activation"),
    ("mlp", (5,), {"noise_sigma_init": -1.0}, "noise_sigma_init"),
    ("mlp", (5,), {"dtype": "float16"}, "dtype"),
    ("cnn", (5,), {}, "kind"),
])
@pytest.mark.filterwarnings("error::RuntimeWarning")          # the error, not a cast warning
def test_bad_config_raises_naming_key(kind, shape, opts, key):
    with pytest.raises(ValueError, match=f"^{key}"):
        models.create_model(kind, shape, "gaussian", rngs=nnx.Rngs(0), **opts)


def test_bad_head_and_input_raise():
    with pytest.raises(ValueError, match="^head"):
        models.create_model("mlp", (5,), "student_t", rngs=nnx.Rngs(0))
    model = models.create_model("resnet1d", SIG_SHAPE, "gaussian", rngs=nnx.Rngs(0), **SMALL)
    with pytest.raises(ValueError, match=r"^x: expected shape \[batch, 40, 3\]"):
        model(jnp.ones((2, 40, 4)))
    with pytest.raises(ValueError, match="^x"):
        jax.jit(lambda x: model(x))(jnp.ones((40, 3)))
    with pytest.raises(ValueError, match=r"^x: expected an array \[batch, 40, 3\], got a list"):
        model(np.ones((2, 40, 3)).tolist())              # an AttributeError on .ndim before


def test_numpy_integer_sizes_build_the_same_model():
    """Sizes read from numpy (np.int64 widths, a shape from an array) are ints too."""
    ref = models.create_model("resnet1d", SIG_SHAPE, "gaussian", rngs=nnx.Rngs(0), **SMALL)
    got = models.create_model("resnet1d", np.array(SIG_SHAPE), "gaussian", rngs=nnx.Rngs(0),
                              widths=np.array([4, 8]), blocks=(np.int64(1), np.int32(2)),
                              kernel_size=np.int64(5), stem_kernel=7, groups=2,
                              sigma_min=np.float32(1e-3))
    x = _signal()
    np.testing.assert_array_equal(got(x).loc, ref(x).loc)
    for kwargs, match in [(dict(kernel_size=np.int64(4)), "kernel_size"),
                          (dict(widths=(4.0, 8.0)), "widths"), (dict(widths=8), "widths"),
                          (dict(blocks=(True, 1)), "blocks")]:
        with pytest.raises(ValueError, match=match):
            models.create_model("resnet1d", SIG_SHAPE, "gaussian", rngs=nnx.Rngs(0),
                                **{**SMALL, **kwargs})
    with pytest.raises(ValueError, match="n_bins"):
        losses.histogram_prior(np.arange(10.0), n_bins=True)
    np.testing.assert_array_equal(losses.histogram_prior(np.arange(10.0), n_bins=np.int64(5)).probs,
                                  np.full(5, 0.2, np.float32))


def test_groups_must_divide_every_width():
    """GroupNorm groups are capped at the width; a width they do not divide is named."""
    from hypuc_jax import train
    from hypuc_jax.config import apply_overrides, get_config

    with pytest.raises(ValueError, match=r"groups: .* got 8 for widths \[12\]"):
        models.create_model("resnet1d", SIG_SHAPE, "gaussian", rngs=nnx.Rngs(0),
                            **{**SMALL, "widths": (12, 16), "groups": 8})
    models.create_model("resnet1d", SIG_SHAPE, "gaussian", rngs=nnx.Rngs(0),
                        **{**SMALL, "widths": (4, 16), "groups": 8})   # 4 < 8: 4 groups of 1
    cfg = apply_overrides(get_config("tiny"), ["model.widths=12,24", "model.groups=8"])
    with pytest.raises(ValueError, match=r"^model\.groups: .*got 8 for widths \[12\]"):
        train.check_model_fits(cfg, (100, 12))


def test_group_norm_defers_to_nnx_for_the_options_it_does_not_fuse():
    """use_fast_variance=False (two-pass variance, accurate for large offsets) and the
    output dtype follow nnx.GroupNorm; float64 numpy reference (tests/np_models.py).

    x = 1000 + noise of std 1e-2 on a 2**-11 grid, 8 elements (4 steps x 2 channels)
    per group: every float32 partial sum and the mean (a division by 8) are exact, so
    x - mean is exact and the two-pass result is off only by the rounding of the
    variance and rsqrt (~1e-7 relative); atol 1e-4. The fast form E[x^2] - mean^2
    loses everything (ulp(1e6) = 0.06 >> var = 1e-4) and is off by ~5.
    """
    rng = np.random.default_rng(0)
    x = (1000 + np.round(rng.normal(0, 1e-2, (2, 4, 4)) * 2 ** 11) / 2 ** 11).astype(np.float32)
    scale, bias = rng.normal(size=4), rng.normal(size=4)
    ref = np_models.group_norm(x, 2, scale, bias, 1e-6)[0]           # nnx default eps 1e-6
    exact = models.GroupNorm(4, num_groups=2, use_fast_variance=False, rngs=nnx.Rngs(0))
    exact.scale[...] = jnp.asarray(scale, jnp.float32)
    exact.bias[...] = jnp.asarray(bias, jnp.float32)
    np.testing.assert_allclose(exact(jnp.asarray(x)), ref, rtol=0, atol=1e-4)
    out = models.GroupNorm(4, num_groups=2, rngs=nnx.Rngs(0))(jnp.ones((1, 3, 4), jnp.bfloat16))
    assert out.dtype == nnx.GroupNorm(4, num_groups=2, rngs=nnx.Rngs(0))(
        jnp.ones((1, 3, 4), jnp.bfloat16)).dtype == jnp.float32


def test_mlp_options_are_checked_by_name():
    model = models.create_model("mlp", (5,), "gaussian", rngs=nnx.Rngs(0), hidden=(8,),
                                dropout=np.float32(0.1))
    assert model.dropout is not None
    for kwargs, match in ((dict(hidden=8), "hidden"), (dict(dropout=True), "dropout"),
                          (dict(dropout=1.0), "dropout")):
        with pytest.raises(ValueError, match=match):
            models.create_model("mlp", (5,), "gaussian", rngs=nnx.Rngs(0), **kwargs)
