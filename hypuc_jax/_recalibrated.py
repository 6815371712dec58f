"""The predictive family of an isotonic recalibration (Kuleshov et al. 2018).

Isotonic recalibration maps the predicted Gaussian CDF level p = Phi(w), w =
(y - mu) / sigma, through a fitted non-decreasing map R: the calibrated CDF
is R(Phi((y - mu) / sigma)). Because R acts on the standardised residual,
the calibrated predictive is the location-scale family mu + sigma W with one
standard CDF F(w) = R(Phi(w)) for every record. R is stored at knots of w and
is linear in Phi(w) between them (R(-inf) = 0, R(inf) = 1), so on each
segment between knots W's density is a constant multiple of the Gaussian's:
g(w) = slope_j phi(w), slope_j = (R_j - R_j-1) / (Phi(k_j) - Phi(k_j-1)).

``RecalibratedNormal`` is that family rescaled to Z = W / s, s the ratio of
W's central ``xi`` interval width to the standard normal's, so that
``sigma_cal = s sigma`` is the Gaussian-equivalent scale: the Gaussian
N(mu, sigma_cal^2) has the recalibrated central ``xi`` interval's width. (Not
the standard deviation: R's end segments are Gaussian tails in units of the
predicted sigma holding 1/n of the mass each, which dominate E[W^2] when
sigma dwarfs the residuals; the interval width does not depend on them.)
W keeps the location R gives it (the residuals' bias); ``centred()`` moves it
to mean 0, the family of an already bias-corrected value.

It is the ``dof`` argument of the functions in ``hypuc_jax._predictions`` and
``hypuc_jax.uncertainty`` for isotonic runs: CDF, quantiles (asymmetric:
intervals need both ends), log density, entropy and CRPS are exact for it.
Moments, entropy and E|W - W'| are integrals over the segments: closed forms
on the two Gaussian tails (-inf, k_1] and [k_K, inf) and on wide finite
segments, 16-point Gauss-Legendre in the probability of each narrow one
(``RecalibratedNormal._inner``); the normal's segment numerics, exact far in
its tails, are in ``hypuc_jax._normal_segments``.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
from scipy import stats

from hypuc_jax._normal_segments import (HALF_LOG_2PI, SQRT2, levels, log_mills_inv,
                                        phi_drop, segment_fraction, segment_point,
                                        segment_terms, x_r_minus_x)

_GL_X, _GL_W = np.polynomial.legendre.leggauss(16)
_GL_X, _GL_W = 0.5 * (_GL_X + 1.0), 0.5 * _GL_W          # on [0, 1]
_FAR = 1e150    # |w| beyond which log Phi(w) overflows: no moments in float64
_NARROW = 0.25  # segments narrower than this over max(1, |w|) integrate numerically
_CHUNK = 65536  # narrow segments integrated at a time
# cached properties of W alone (``centred`` shares them)
_W_CACHES = ("_ext", "_tails", "_inner", "_moments", "scale", "_partial_means")


@dataclasses.dataclass(frozen=True)
class RecalibratedNormal:
    """The family Z = (W - loc) / s, P(W <= w) = R(Phi(w)) (module docstring).

    Attributes:
      knots: standardised residuals w at the knots of R, strictly increasing, finite.
      freqs: R at those knots, non-decreasing, in [0, 1].
      xi: coverage whose central interval fixes the scale s, in (0, 1).
      loc: location of W subtracted before scaling, Z = (W - loc) / s (0: the
        recalibrated residual itself; ``centred`` sets E[W]).
    """
    knots: tuple
    freqs: tuple
    xi: float = 0.95
    loc: float = 0.0

    def __post_init__(self):
        k = np.asarray(self.knots, dtype=np.float64)
        f = np.asarray(self.freqs, dtype=np.float64)
        if (k.ndim != 1 or k.size == 0 or f.shape != k.shape or not np.all(np.isfinite(k))
                or np.any(np.diff(k) <= 0) or not np.all((f >= 0) & (f <= 1))
                or np.any(np.diff(f) < 0)):
            raise ValueError("family: expected strictly increasing finite knots and "
                             "non-decreasing frequencies in [0, 1], one per knot, got "
                             f"knots {self.knots!r}, freqs {self.freqs!r}")
        object.__setattr__(self, "knots", tuple(k.tolist()))
        object.__setattr__(self, "freqs", tuple(f.tolist()))
        if not (isinstance(self.xi, (int, float)) and 0.0 < self.xi < 1.0):
            raise ValueError(f"xi: expected a coverage in (0, 1), got {self.xi!r}")
        object.__setattr__(self, "xi", float(self.xi))
        if not (isinstance(self.loc, (int, float)) and math.isfinite(self.loc)):
            raise ValueError(f"loc: expected a finite number, got {self.loc!r}")
        object.__setattr__(self, "loc", float(self.loc))

    # -- serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON form: {"family": "isotonic", "knots": [...], "freqs": [...], "xi", "loc"}."""
        return {"family": "isotonic", "knots": list(self.knots), "freqs": list(self.freqs),
                "xi": self.xi, "loc": self.loc}

    @classmethod
    def from_dict(cls, d: dict, name: str = "family") -> "RecalibratedNormal":
        """Rebuilds the family from ``to_dict`` output (ValueError naming ``name``)."""
        if not (isinstance(d, dict) and d.get("family") == "isotonic"
                and "knots" in d and "freqs" in d):
            raise ValueError(f"{name}: expected an isotonic family dict with knots and freqs, "
                             f"got {d!r}")
        return cls(tuple(d["knots"]), tuple(d["freqs"]), d.get("xi", 0.95), d.get("loc", 0.0))

    # -- W: the recalibrated standardised residual -----------------------------------
    @functools.cached_property
    def _ext(self) -> tuple[np.ndarray, np.ndarray]:
        """Knots and frequencies with the anchors R(-inf) = 0 and R(inf) = 1."""
        return (np.concatenate([[-np.inf], self.knots, [np.inf]]),
                np.concatenate([[0.0], self.freqs, [1.0]]))

    def _segment(self, w: np.ndarray) -> np.ndarray:
        knots, _ = self._ext
        return np.clip(np.searchsorted(knots, w, side="right"), 1, knots.size - 1)

    def _locate(self, w) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(w, segment j of each w (1 .. K + 1), fraction of the segment's
        probability below w), w as float64 (ValueError for NaN). On the tails the
        fraction is Phi(w) / Phi(k_1) (1 - its upper mirror) from the Mills ratios,
        exact where log Phi(w) itself is too large to difference (|w| >~ 1e7)."""
        w = np.atleast_1d(np.asarray(w, dtype=np.float64))
        if np.isnan(w).any():
            raise ValueError("z: expected standardised residuals, got NaN")
        knots, _ = self._ext
        j = self._segment(w)
        frac = np.array(segment_fraction(w, knots[j - 1], knots[j]), dtype=np.float64, ndmin=1)
        finite = np.isfinite(w)
        for side, at in (("lo", finite & (j == 1)), ("hi", finite & (j == knots.size - 1))):
            if at.any() and self._tails[side]["x"] > 0:      # a tail on its own side of 0
                x, log_r = self._tails[side]["x"], self._tails[side]["log_r"]
                v = w[at] if side == "hi" else -w[at]          # how far out, on its side
                with np.errstate(under="ignore"):
                    ratio = np.exp(log_r - log_mills_inv(v) - 0.5 * (v - x) * (v + x))
                frac[at] = ratio if side == "lo" else 1.0 - ratio
        return w, j, frac

    def w_cdf(self, w) -> np.ndarray:
        """R(Phi(w)) for standardised residual(s) w (ValueError for NaN; +-inf give 1 and 0)."""
        _, freqs = self._ext
        _, j, t = self._locate(w)
        return _shaped(freqs[j - 1] + t * (freqs[j] - freqs[j - 1]), w)

    def w_ppf(self, q) -> np.ndarray:
        """The smallest w with R(Phi(w)) >= q, for q in [0, 1] (ValueError outside or NaN)."""
        q = levels(q, "q")
        knots, freqs = self._ext
        j = np.clip(np.searchsorted(freqs, q, side="left"), 1, freqs.size - 1)
        f0, f1 = freqs[j - 1], freqs[j]
        t = np.where(f1 > f0, (q - f0) / np.where(f1 > f0, f1 - f0, 1.0), 1.0)
        return segment_point(np.clip(t, 0.0, 1.0), knots[j - 1], knots[j])

    def _check_range(self) -> None:
        far = max(abs(self.knots[0]), abs(self.knots[-1]))
        if far > _FAR:
            raise ValueError(f"sigma: the fitted residuals reach {far:.3g} predicted standard "
                             "deviations, beyond what float64 resolves in Phi(z); expected "
                             "scales within ~1e150 of the residuals")

    @functools.cached_property
    def _tails(self) -> dict:
        """The Gaussian tails (-inf, k_1] and [k_K, inf), each as x (-k_1, k_K: the tail
        is w <= -x or w >= x), mass m, log m and r = phi(x) / (1 - Phi(x))."""
        self._check_range()
        out = {}
        for side, x, m in (("lo", -self.knots[0], self.freqs[0]),
                           ("hi", self.knots[-1], 1.0 - self.freqs[-1])):
            log_r = float(log_mills_inv(x))
            out[side] = {"x": x, "m": m, "log_m": math.log(m) if m > 0 else -math.inf,
                         "log_r": log_r, "r": math.exp(log_r)}
        return out

    def _tail_log_density(self, side: str, w: np.ndarray) -> np.ndarray:
        """log g(w) on a tail, g = m phi(w) / P(tail): log m + log r(x) - (w^2 - x^2) / 2
        without forming w^2 when the tail lies on its own side of 0 (x > 0), else
        directly (P(tail) ~ 1 there)."""
        t = self._tails[side]
        x = t["x"]
        if x > 0:
            return t["log_m"] + t["log_r"] - 0.5 * (np.abs(w) - x) * (np.abs(w) + x)
        return t["log_m"] + stats.norm.logpdf(w) - stats.norm.logsf(x)

    def _tail_log_prob(self, side: str, w: np.ndarray) -> np.ndarray:
        """log P(W <= w) on the lower tail, log P(W > w) on the upper."""
        t = self._tails[side]
        v = -w if side == "lo" else w                     # how far out, on its side
        if t["x"] > 0:
            return self._tail_log_density(side, w) - log_mills_inv(v)
        return t["log_m"] + stats.norm.logsf(v) - stats.norm.logsf(t["x"])

    @functools.cached_property
    def _inner(self) -> dict:
        """Per finite segment [a, b] = [k_j-1, k_j], [K - 1]: its log density as
        log g(w) = c - (w - e)(w + e) / 2 about the end e nearest 0 (0 if it holds
        0), so that no w^2 / 2 is cancelled against log(Phi(b) - Phi(a)); and its
        mass, E[W; seg], E[W^2; seg], E[W (2 F(W) - 1); seg] and -E[log g(W); seg].

        A narrow segment (width <= ``_NARROW`` / max(1, |w|)) integrates in its
        probability with 16-point Gauss-Legendre, where W's quantile is nearly
        linear; a wide one uses closed forms in phi(a) / dPhi, phi(b) / dPhi and
        int w Phi phi = -phi Phi + Phi(sqrt2 w) / (2 sqrt(pi)), from Mills ratios
        on segments away from 0 (:func:`segment_terms`).
        """
        k, f = np.asarray(self.knots), np.asarray(self.freqs)
        a, b, fa, df = k[:-1], k[1:], f[:-1], np.diff(f)
        e = np.where(a >= 0, a, np.where(b <= 0, b, 0.0))
        with np.errstate(divide="ignore"):
            log_df = np.log(df)
        c, A, B, cross, q2 = segment_terms(a, b, e)
        c = log_df + c
        out = {"c": c, "e": e, "log_ga": c - 0.5 * (a - e) * (a + e), "df": df}
        m1, m2, gini, ent = (np.zeros_like(df) for _ in range(4))
        live = df > 0
        narrow = live & ((b - a) <= _NARROW / np.maximum(1.0, np.maximum(np.abs(a), np.abs(b))))
        for idx in np.array_split(np.flatnonzero(narrow), max(1, narrow.sum() // _CHUNK)):
            an, bn, fn, dn = a[idx], b[idx], fa[idx], df[idx]    # chunks bound the memory
            w = segment_point(_GL_X[None, :], an[:, None], bn[:, None])            # [S, 16]
            q = fn[:, None] + dn[:, None] * _GL_X[None, :]
            en = e[idx][:, None]
            m1[idx] = dn * (w @ _GL_W)
            m2[idx] = dn * (w ** 2 @ _GL_W)
            gini[idx] = dn * ((w * (2.0 * q - 1.0)) @ _GL_W)
            ent[idx] = dn * (-c[idx] + (0.5 * (w - en) * (w + en)) @ _GL_W)
        wide = live & ~narrow
        if wide.any():
            dw, fw = df[wide], fa[wide]
            m1[wide] = dw * (A[wide] - B[wide])                  # slope int w phi
            m2[wide] = dw * (1.0 + a[wide] * A[wide] - b[wide] * B[wide])
            # E[W frac(W); seg] = df (cross - phi(b) / dPhi), F = f_a + df frac
            gini[wide] = (2.0 * fw - 1.0) * m1[wide] + 2.0 * dw * dw * (cross[wide] - B[wide])
            ent[wide] = dw * (-c[wide] + 0.5 * q2[wide])
        out.update(m1=m1, m2=m2, gini=gini, ent=ent)
        return out

    @functools.cached_property
    def _moments(self) -> dict:
        """E[W], E[W^2], E|W - W'| and the entropy of W.

        A tail of mass m beyond x (r = phi(x) / (1 - Phi(x))) adds -+m r to E[W],
        m (1 + x r) to E[W^2], 2 m^2 (r^2 / (sqrt2 r(sqrt2 x)) - r) + m r to
        E[W (2 F(W) - 1)] (from int w Phi phi = -phi Phi + Phi(sqrt2 w) / (2
        sqrt(pi))), and m (-log m - log r + 1/2 + x (r - x) / 2) to the entropy:
        each written so that nothing of order x^2 cancels.
        """
        inner = self._inner
        m1, m2 = float(np.sum(inner["m1"])), float(np.sum(inner["m2"]))
        gini, ent = float(np.sum(inner["gini"])), float(np.sum(inner["ent"]))
        for side, sign in (("lo", -1.0), ("hi", 1.0)):
            t = self._tails[side]
            m, x, r = t["m"], t["x"], t["r"]
            if m > 0:
                m1 += sign * m * r
                m2 += m * (1.0 + x * r)
                if x > 0:            # r^2 / (sqrt2 r(sqrt2 x)) from the logs of the ratios
                    ratio = math.exp(2.0 * t["log_r"] - float(log_mills_inv(SQRT2 * x)))
                    ratio /= SQRT2
                    ent += m * (-t["log_m"] - t["log_r"] + 0.5 + 0.5 * float(x_r_minus_x(x)))
                else:                # the tail holds 0: (1 - Phi(sqrt2 x)) / (2 sqrt(pi) P^2)
                    log_p = float(stats.norm.logsf(x))
                    ratio = math.exp(float(stats.norm.logsf(SQRT2 * x)) - 2.0 * log_p) / (
                        2.0 * math.sqrt(math.pi))
                    ent += m * (-t["log_m"] + log_p + HALF_LOG_2PI + 0.5 * (1.0 + x * r))
                gini += 2.0 * m * m * (ratio - r) + m * r
        return {"mean": m1, "second": m2, "gini": 2.0 * gini, "entropy": ent}

    @functools.cached_property
    def scale(self) -> float:
        """s: W's central ``xi`` interval width over N(0, 1)'s; the calibrated sigma is
        s times the predicted sigma.

        Raises:
          ValueError: the knots beyond ~1e150 (Phi(w) unresolved in float64), or a
            zero-width interval (too few validation samples for ``xi``).
        """
        self._check_range()
        lo, hi = self.w_ppf(np.array([0.5 - self.xi / 2.0, 0.5 + self.xi / 2.0]))
        width = float(hi - lo)
        if not (math.isfinite(width) and width > 0):
            raise ValueError(f"level: the recalibrated {self.xi} interval has width {width}; "
                             "refit on more validation samples or use a smaller level")
        return width / (2.0 * float(stats.norm.ppf(0.5 + self.xi / 2.0)))

    # -- Z = (W - loc) / s: the family as used with the calibrated sigma --------------
    def _w(self, z) -> np.ndarray:
        return self.scale * np.asarray(z, dtype=np.float64) + self.loc

    @property
    def mean(self) -> float:
        """E[Z] (0 once ``centred``)."""
        return (self._moments["mean"] - self.loc) / self.scale

    @property
    def sd(self) -> float:
        """Standard deviation of Z (that of mu + sigma Z is sigma sd)."""
        mom = self._moments
        return math.sqrt(max(mom["second"] - mom["mean"] ** 2, 0.0)) / self.scale

    def centred(self) -> "RecalibratedNormal":
        """The same shape moved to mean 0: the family of a value that is already
        bias-corrected (the boosted corrections' output) with the calibrated sigma.
        Its W is this one's, so the integrals already computed carry over."""
        out = dataclasses.replace(self, loc=self._moments["mean"])
        for name in _W_CACHES:                   # none of them depends on loc
            if name in self.__dict__:
                out.__dict__[name] = self.__dict__[name]
        return out

    def cdf(self, z) -> np.ndarray:
        """P(Z <= z)."""
        return self.w_cdf(self._w(z))

    def ppf(self, q) -> np.ndarray:
        """Quantile of Z at level(s) q in [0, 1] (+-inf at 0 and 1)."""
        return (self.w_ppf(q) - self.loc) / self.scale

    def logsf_logcdf(self, z) -> tuple[np.ndarray, np.ndarray]:
        """(log P(Z > z), log P(Z <= z)), from the Gaussian tails' logs beyond the end knots."""
        knots, freqs = self._ext
        w, j, t = self._locate(self._w(z))
        fa, fb = freqs[j - 1], freqs[j]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            cdf, sf = fa + t * (fb - fa), (1.0 - fb) + (1.0 - t) * (fb - fa)
            logcdf, logsf = np.log(cdf), np.log(sf)
            # tail probabilities in logs, where they underflow as levels
            first = (j == 1) & np.isfinite(w)
            last = (j == knots.size - 1) & np.isfinite(w)
            if self._tails["lo"]["m"] > 0 and first.any():
                logcdf[first] = self._tail_log_prob("lo", w[first])
            if self._tails["hi"]["m"] > 0 and last.any():
                logsf[last] = self._tail_log_prob("hi", w[last])
        return _shaped(logsf, z), _shaped(logcdf, z)

    def logpdf(self, z) -> np.ndarray:
        """log density of Z at z (-inf on a segment where R is flat; ValueError for NaN)."""
        knots, _ = self._ext
        w, j, _ = self._locate(self._w(z))
        out = np.full(w.shape, -np.inf)
        inner = (j > 1) & (j < knots.size - 1)
        if inner.any():                  # c - (w - e)(w + e) / 2, -inf where R is flat
            ji, wi = j[inner] - 2, w[inner]
            c, e = self._inner["c"][ji], self._inner["e"][ji]
            out[inner] = np.where(self._inner["df"][ji] > 0, c - 0.5 * (wi - e) * (wi + e),
                                  -np.inf)
        for side, at in (("lo", j == 1), ("hi", j == knots.size - 1)):
            if at.any() and self._tails[side]["m"] > 0:
                out[at] = self._tail_log_density(side, w[at])
        return _shaped(math.log(self.scale) + out, z)

    @property
    def entropy(self) -> float:
        """Differential entropy of Z (that of mu + sigma Z adds log sigma)."""
        return self._moments["entropy"] - math.log(self.scale)

    @functools.cached_property
    def _partial_means(self) -> np.ndarray:
        """E[W; W <= k_j] at each knot, [K]."""
        lo = self._tails["lo"]
        return -lo["m"] * lo["r"] + np.concatenate([[0.0], np.cumsum(self._inner["m1"])])

    def crps(self, z) -> np.ndarray:
        """CRPS of Z at each z (that of mu + sigma Z at y is sigma crps((y - mu) / sigma)).

        CRPS = E|W - w| - E|W - W'| / 2 over s, with E|W - w| = w (2 F(w) - 1) +
        E[W] - 2 E[W; W <= w]; the partial mean is the knots' running sum plus
        slope (phi(k_j-1) - phi(w)) within the record's segment (a tail: -+ g(w)).
        """
        knots, freqs = self._ext
        w, j, frac = self._locate(self._w(z))
        cdf = freqs[j - 1] + frac * (freqs[j] - freqs[j - 1])
        inner = (j > 1) & (j < knots.size - 1)
        part = np.zeros_like(w)
        mom = self._moments
        with np.errstate(over="ignore", under="ignore", divide="ignore"):
            if inner.any():
                ji, a = j[inner] - 2, knots[j - 1][inner]
                part[inner] = self._partial_means[ji] + np.where(
                    self._inner["df"][ji] > 0, phi_drop(self._inner["log_ga"][ji], a, w[inner]),
                    0.0)
            first, last = j == 1, j == knots.size - 1
            # E[W; W <= w] on the lower tail is -g(w); on the upper, E[W] - g(w)
            if self._tails["lo"]["m"] > 0:
                part[first] = -np.exp(self._tail_log_density("lo", w[first]))
            part[last] = mom["mean"] - (np.exp(self._tail_log_density("hi", w[last]))
                                        if self._tails["hi"]["m"] > 0 else 0.0)
        abs_dev = w * (2.0 * cdf - 1.0) + mom["mean"] - 2.0 * part
        return _shaped((abs_dev - 0.5 * mom["gini"]) / self.scale, z)


def _shaped(values, like):
    """``values`` (1-d, from ``_locate``) in the shape of the input ``like``: a numpy
    scalar for a scalar input."""
    return np.asarray(values).reshape(np.shape(like))[()]


def is_family(dof) -> bool:
    """True for a recalibrated family (the ``dof`` of an isotonic calibration)."""
    return isinstance(dof, RecalibratedNormal)
