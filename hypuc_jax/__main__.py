"""``python -m hypuc_jax ...``: the ``hypuc`` command line."""
from hypuc_jax.cli import console

if __name__ == "__main__":
    console()
