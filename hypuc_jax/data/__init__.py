"""Data: simulator, sources, splits, scaling and batches."""
from hypuc_jax.data.simulator import LEAD_NAMES, simulate
from hypuc_jax.data.tasks import PRESETS, TaskInfo, Threshold, get_task
