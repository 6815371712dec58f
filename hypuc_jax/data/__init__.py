"""Data: the ECG simulator, data sources, splits, scaling and batches.

Public API::

    simulate(seed, n, preset="potassium", rate=100, duration=10.0, backend="numpy")
        -> (x [n, time, 12] float32, y [n] float32)
    load(spec) -> Dataset                 # "simulated:potassium?n=2000", "csv:PATH?target=K", ...
    load_for_config(config) -> Dataset
    parse_spec(spec) -> (kind, arg, options); input_files(spec) -> paths the spec reads
    Dataset(x, y, task, kind, rate, split, feature_names, source)
    TaskInfo(name, target, unit, regions, thresholds), Threshold(name, value, direction)
    split_indices(n, seed, fractions=(0.6, 0.2, 0.2), fixed=None) -> {"train", "val", "test"}
    Scaler.fit(x, y, indices=None), .transform_x / .transform_y / .inverse_y / .to_dict / .from_dict
    batch_iterator(x, y, indices, batch_size, train=..., ...) -> {"x", "y", "w", "mask"} batches
    prefetch_to_device(iterator, size=2, sharding=None)
"""
from hypuc_jax.data.pipeline import Scaler, batch_iterator, prefetch_to_device, split_indices
from hypuc_jax.data.readers import RowView
from hypuc_jax.data.sim_labels import effective_labels
from hypuc_jax.data.simulator import LEAD_NAMES, simulate
from hypuc_jax.data.sources import Dataset, load, load_for_config
from hypuc_jax.data.spec import feature_option, input_files, parse_spec
from hypuc_jax.data.tasks import PRESETS, Preset, TaskInfo, Threshold, get_preset, get_task

__all__ = [
    "LEAD_NAMES", "PRESETS", "Dataset", "Preset", "RowView", "Scaler", "TaskInfo", "Threshold",
    "batch_iterator", "get_preset", "get_task", "load", "load_for_config", "parse_spec",
    "input_files", "feature_option",
    "effective_labels", "prefetch_to_device", "simulate", "split_indices",
]
