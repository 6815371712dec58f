"""hypuc_jax: HypUC (KDE-weighted probabilistic regression, hyperfine
calibration, gradient-boosted corrections) in JAX/Flax.

Data flows one way, one module per stage::

    config -> data -> kde -> weights -> models + losses -> train
           -> calibration -> corrections -> metrics -> report / cli
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``hypuc_jax.kde`` etc. without importing every stage up front (PEP 562)."""
    import importlib
    import pkgutil
    if not name.startswith("_") and name in {m.name for m in pkgutil.iter_modules(__path__)}:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
