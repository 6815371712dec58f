"""Label samples and references shared by the KDE tests."""
import numpy as np


def skewed_labels(n, seed=0):
    """Potassium-like labels: mostly around 4.2 with a long right tail."""
    rng = np.random.default_rng(seed)
    k = n // 10
    return np.concatenate([rng.normal(4.2, 0.45, n - k), 4.6 + rng.gamma(2.0, 0.7, k)])


def rel_l1(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).sum() / np.abs(b).sum()


def diagonal_cov_sample(n, d, stds, seed=0):
    """Sample [n, d] whose sample covariance is exactly diag(stds^2).

    scipy's gaussian_kde uses the full data covariance times factor^2; on data
    with diagonal covariance that is the diagonal bandwidth h = factor * stds.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) + 0.3 * rng.normal(size=(n, 1))  # correlated
    x = x - x.mean(0)
    chol = np.linalg.cholesky(np.cov(x.T))
    return x @ np.linalg.inv(chol).T * np.asarray(stds) + np.arange(d)


def closed_form(x, rule):
    n = x.shape[0]
    s = np.std(x, axis=0, ddof=1)
    if rule == "scott":
        return 1.06 * s * n ** -0.2
    iqr = np.percentile(x, 75, axis=0) - np.percentile(x, 25, axis=0)
    return 0.9 * np.minimum(s, iqr / 1.34) * n ** -0.2
