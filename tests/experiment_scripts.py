"""Imports a script of experiments/ (not a package) as a module, for its tests."""
import importlib
import os
import sys

EXPERIMENTS = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, "experiments"))


def load(name: str):
    """The module experiments/NAME.py; its sibling imports (``_results``, ...) resolve too."""
    if EXPERIMENTS not in sys.path:
        sys.path.insert(0, EXPERIMENTS)
    return importlib.import_module(name)
