"""The run configuration's types: choice tuples and the frozen section dataclasses.

Users reach them through :mod:`hypuc_jax.config` (which adds the presets,
overrides and checks); this module only keeps ``config.py`` small.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
from typing import Optional, Union

from hypuc_jax import _typed_fields as typed_fields

LOSSES = ("nll", "laplace", "mse", "l1", "huber", "bmc", "bni")
WEIGHTINGS = ("none", "hypuc", "inverse", "sqrt_inv", "lds", "denseweight")
WEIGHT_APPLY = ("loss", "resample")
WEIGHT_SCOPES = ("network", "head")
#: Largest HypUC exponent: beyond it float32 weights drift from mean 1 (1e-4 at
#: 1000, 2% at 1e6, all on one label at 1e8); from lam ~10 on, one rare label
#: already holds almost the whole weight.
MAX_LAM = 100.0
#: The ``weighting`` fields each scheme reads (the others are stored, unused;
#: scheme "none" reads none of them).
WEIGHTING_FIELDS = {"hypuc": ("lam", "bandwidth", "method", "max_weight"),
                    "inverse": ("bins",), "sqrt_inv": ("bins",),
                    "lds": ("bins", "lds_kernel", "lds_ks", "lds_sigma"),
                    "denseweight": ("dense_alpha", "bandwidth", "method")}
PARALLEL = ("auto", "none", "sharding", "pmap")
SELECT_ON = ("nll", "weighted_nll")
MODEL_KINDS = ("auto", "resnet1d", "mlp")
CALIBRATIONS = ("none", "global", "hyperfine", "isotonic")
CALIBRATION_TAILS = ("auto", "gaussian")
CALIBRATION_QUANTILES = ("linear", "conformal")   # calibration.QUANTILES
CORRECTION_TARGETS = ("residual", "label")   # corrections.TARGETS
SHOT_REGION_NAMES = ("many", "medium", "few")  # regions.SHOT_REGIONS: not for named regions
BANDWIDTH_RULES = ("scott", "silverman")
KDE_METHODS = ("binned", "exact")
LDS_KERNELS = ("gaussian", "triang", "laplace")
ACTIVATIONS = ("relu", "gelu", "silu", "tanh")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Data source and split. ``spec`` is passed to ``hypuc_jax.data.load``."""
  spec: str = "simulated:potassium"
  target: Optional[str] = None
  seed: int = 0
  split: tuple[float, ...] = (0.6, 0.2, 0.2)
  strict: bool = False


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Backbone. ``kind="auto"``: resnet1d for signals, mlp for tabular data.

  ``widths`` are the ResNet stage widths or the MLP hidden sizes; ``blocks``,
  ``kernel_size``, ``stem_*`` and ``groups`` apply to resnet1d, ``activation``
  to mlp.
  """
  kind: str = "auto"
  widths: tuple[int, ...] = (32, 64, 128)
  blocks: tuple[int, ...] = (1, 1, 1)
  kernel_size: int = 7
  stem_kernel: int = 15
  stem_stride: int = 2
  groups: int = 8
  activation: str = "relu"
  dropout: float = 0.0
  sigma_min: float = 1e-3
  dtype: str = "float32"


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Per-example loss; the head (gaussian/laplace/point) follows from it.

  ``noise_sigma`` (Balanced MSE) is in standardised label units (labels are
  scaled to mean 0, std 1 on the training split); ``learn_noise`` makes it
  a trained parameter initialised there. ``beta`` > 0 turns "nll" /
  "laplace" into beta-NLL (``losses.variance_weighted``, Seitzer et al.
  2022): each example's likelihood is multiplied by its predicted variance
  to the power beta, held constant, so noisy ranges still teach the mean.
  """
  name: str = "nll"
  beta: float = 0.0
  huber_delta: float = 1.0
  noise_sigma: float = 1.0
  learn_noise: bool = True
  bni_bins: int = 100


@dataclasses.dataclass(frozen=True)
class WeightingConfig:
  """Label weighting, fitted once on the training labels (weights.py).

  ``apply`` says how the weights enter training: "loss" multiplies each
  example's loss, ``sum w*l / sum w`` over the batch; "resample" draws every
  epoch's examples with probability proportional to w (with replacement)
  and averages their losses unweighted: the same objective in expectation,
  with lower-variance gradients (``data.batch_iterator``). Scheme "none"
  always shuffles plainly.

  ``defer`` (deferred re-weighting, Cao et al., NeurIPS 2019): the first
  ``round(defer * steps)`` optimiser steps train unweighted (every weight
  1) and the rest with the scheme's weights, so the features are learnt
  from the natural label distribution and the weighting adjusts the fit
  late, at a lower learning rate. Checkpoints of the unweighted phase are
  not candidates for the run's model, and early stopping starts counting
  after it. 0 (default) weights every step; needs ``apply="loss"``; no
  effect with scheme "none".

  ``scope`` says which parameters the weighted loss trains. "network"
  (default, the SPEC): all of them. "head" (decoupled re-weighting,
  regressor re-training; Kang et al., ICLR 2020; Yang et al., ICML 2021):
  the network is trained and its checkpoint selected as without weighting,
  then the head alone (the last linear layer, ``head_refit``) is re-fitted
  to the frozen features of the training split by minimising the weighted
  loss (L-BFGS, full batch, a ridge pull towards the trained head chosen on
  the weighted validation loss). Needs ``apply="loss"``, ``defer=0``, a
  per-example loss (not "bmc"), ``loss.beta=0`` and ``train.select_on=
  "nll"``; no effect with scheme "none".
  """
  scheme: str = "hypuc"
  apply: str = "loss"
  defer: float = 0.0
  scope: str = "network"
  lam: float = 0.5
  bandwidth: Union[str, float] = "scott"
  method: str = "binned"
  max_weight: Optional[float] = None
  bins: int = 100
  lds_kernel: str = "gaussian"
  lds_ks: int = 5
  lds_sigma: float = 2.0
  dense_alpha: float = 1.0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimisation and loop. ``steps > 0`` overrides ``epochs``.

  ``eval_every`` / ``checkpoint_every`` / ``log_every`` count optimiser steps;
  ``early_stopping_patience`` counts evaluations without a better validation
  score (0 disables early stopping).

  ``select_on`` is the validation score that ranks checkpoints (the best
  one is the run's model) and drives early stopping: "nll" is the plain
  mean; "weighted_nll" is the training objective on the validation split,
  ``sum w*l / sum w`` with the run's label weighting (fitted on the
  training labels) applied to the validation labels. They coincide for
  ``weighting.scheme=none``. "weighted_nll" is noisier (a few rare
  validation labels carry most of the weight) and measured worse on the
  potassium task (experiments/results/README.md).
  """
  batch_size: int = 64
  eval_batch_size: int = 256
  epochs: int = 10
  steps: int = 0
  lr: float = 1e-3
  weight_decay: float = 1e-4
  warmup_steps: int = 100
  grad_clip: float = 1.0
  parallel: str = "auto"
  log_every: int = 50
  eval_every: int = 200
  checkpoint_every: int = 200
  keep_checkpoints: int = 3
  early_stopping_patience: int = 5
  select_on: str = "nll"
  prefetch: int = 2
  transfer_guard: bool = True
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class CalibrationConfig:
  """Uncertainty calibration fitted on the validation split.

  ``tail`` (hyperfine only): "auto" fits the tail of the calibrated
  predictive, a unit-variance Student-t whose dof (inf, the Gaussian,
  included) has the lowest 5-fold cross-fitted validation UCE; "gaussian"
  keeps the SPEC's Gaussian. Both give the same central ``xi`` intervals.

  ``quantile`` (hyperfine only): how each bin's factor takes the ``xi``
  quantile of its scores. "linear" is the SPEC's interpolated quantile; it
  covers slightly less than ``xi`` in expectation on small bins (about 0.90
  at 15 samples per bin for xi = 0.95). "conformal" takes the
  ceil((n + 1) xi)-th smallest of a bin's n scores, which covers at least
  ``xi`` in expectation for exchangeable data (split-conformal), at the cost
  of wider intervals on small bins.
  """
  method: str = "hyperfine"
  bins: int = 10
  min_count: int = 20
  xi: float = 0.95
  tail: str = "auto"
  quantile: str = "linear"


@dataclasses.dataclass(frozen=True)
class CorrectionsConfig:
  """Gradient-boosted corrections and decisions (validation split only).

  ``enabled`` must stay true: the stage always runs (the key is kept so that
  configs written before it lost its meaning still load).

  ``target``: the value regressors fit the residual ``y - mu`` ("residual",
  corrected = mu + the fit) or the label itself ("label");
  ``corrections.TARGETS``. ``max_depth`` sets the trees' size as
  ``2 ** max_depth`` leaves (scikit-learn's HGB grows trees leaf by leaf, so
  a tree can be deeper than ``max_depth``). ``n_models``: ensemble members,
  each on a bootstrap resample of the validation rows when there are several.
  """
  enabled: bool = True
  target: str = "residual"
  n_models: int = 1
  n_estimators: int = 200
  max_depth: int = 3
  learning_rate: float = 0.05
  specificity: float = 0.9
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class Config:
  """Full run configuration. ``regions``: extra (name, low, high) ranges."""
  data: DataConfig = DataConfig()
  model: ModelConfig = ModelConfig()
  loss: LossConfig = LossConfig()
  weighting: WeightingConfig = WeightingConfig()
  train: TrainConfig = TrainConfig()
  calibration: CalibrationConfig = CalibrationConfig()
  corrections: CorrectionsConfig = CorrectionsConfig()
  regions: tuple[tuple[str, float, float], ...] = ()

  def __post_init__(self):
    # Built in Python, bounds may be numpy numbers (np.percentile) and the regions
    # lists: stored as (str, float, float) tuples, so config.json can be written.
    # Anything else is left for ``config.validate`` to name.
    def real(v):                             # numpy's bool is not a numbers.Real
      return isinstance(v, numbers.Real) and not isinstance(v, bool)

    if isinstance(self.regions, (list, tuple)):
      object.__setattr__(self, "regions", tuple(
          (r[0], float(r[1]), float(r[2]))
          if isinstance(r, (list, tuple)) and len(r) == 3 and isinstance(r[0], str)
          and real(r[1]) and real(r[2]) else r for r in self.regions))

  def to_dict(self) -> dict:
    """JSON-compatible nested dict (tuples become lists; an open region bound,
    -inf or +inf, becomes null, as JSON has no infinity)."""
    d = json.loads(json.dumps(dataclasses.asdict(self)))
    d["regions"] = [[name, None if math.isinf(lo) else lo, None if math.isinf(hi) else hi]
                    for name, lo, hi in d["regions"]]
    return d

  @classmethod
  def from_dict(cls, d: dict) -> "Config":
    """Inverse of ``to_dict``; unknown keys raise ValueError naming them."""
    if isinstance(d, dict) and isinstance(d.get("regions"), (list, tuple)):
      d = dict(d, regions=[[r[0], -math.inf if r[1] is None else r[1],
                            math.inf if r[2] is None else r[2]]
                           if isinstance(r, (list, tuple)) and len(r) == 3 else r
                           for r in d["regions"]])
    return typed_fields.from_dict(cls, d, "")
