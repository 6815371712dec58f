"""hypuc_jax: HypUC (KDE-weighted probabilistic regression, hyperfine
calibration, gradient-boosted corrections) in JAX/Flax.

Data flows one way, one module per stage::

    config -> data -> kde -> weights -> models + losses -> train
           -> calibration -> corrections -> metrics -> report / cli
"""

__version__ = "0.1.0"


def _submodules() -> set[str]:
    import pkgutil
    return {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}


def __getattr__(name: str):
    """``hypuc_jax.kde`` etc. without importing every stage up front (PEP 562)."""
    if name in _submodules():
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _submodules())
