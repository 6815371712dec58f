"""One process of the multi-host test (launched by tests/test_multihost.py).

Usage: ``python tests/multihost_worker.py DATA_SPEC ROOT OUT_PREFIX MODES [OVERRIDE ...]``

``MODES`` is a comma-separated list of ``train.parallel`` modes; each is
trained in turn into ``ROOT/MODE``, in this one process (one JAX start and
one distributed runtime for all of them, which is what makes the test cheap).

The device count and the platform come from the environment the test sets
(``JAX_PLATFORMS=cpu``, ``HYPUC_LOCAL_DEVICES``); a multi-process run is
selected by ``HYPUC_NUM_PROCESSES`` / ``HYPUC_COORDINATOR`` /
``HYPUC_PROCESS_ID``, which ``train.train_and_evaluate`` reads itself (via
``parallel.maybe_initialize_distributed``). Nothing here touches a JAX
backend before ``train_and_evaluate`` runs, so the distributed runtime is
initialised by the library, as in a real launch (the later runs find it
initialised). What the process saw in each run (process index/count, device
counts, the returned metrics) is written to ``OUT_PREFIX-MODE.json``, outside
the shared workdirs.
"""
import json
import os
import sys


def main(argv: list[str]) -> None:
  spec, root, out_prefix, modes, *overrides = argv
  import jax
  jax.config.update("jax_num_cpu_devices", int(os.environ["HYPUC_LOCAL_DEVICES"]))
  from hypuc_jax import train
  from hypuc_jax.config import apply_overrides, get_config
  for mode in modes.split(","):
    config = apply_overrides(get_config("tiny"), [f"data.spec={spec}", *overrides,
                                                  f"train.parallel={mode}"])
    result = train.train_and_evaluate(config, os.path.join(root, mode))
    record = {"process_index": jax.process_index(), "process_count": jax.process_count(),
              "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
              "steps": result.steps, "best_step": result.best_step,
              "best_metrics": result.best_metrics, "final_val": result.final_metrics["val"]}
    with open(f"{out_prefix}-{mode}.json", "w") as f:
      json.dump(record, f)


if __name__ == "__main__":
  main(sys.argv[1:])
