"""hypuc_jax: HypUC (KDE-weighted probabilistic regression, hyperfine
calibration, gradient-boosted corrections) in JAX/Flax.

Data flows one way, one module per stage::

    config -> data -> kde -> weights -> models + losses -> train
           -> calibration -> corrections -> metrics -> report / cli
"""

__version__ = "0.1.0"
