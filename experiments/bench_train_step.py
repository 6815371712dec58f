"""Throughput of the jitted train step vs the same network and loss in PyTorch.

ECG ResNet1D (the default ``config.ModelConfig`` sizes), batch 64, 12 leads,
1000 samples, weighted Gaussian NLL ``sum(w*l)/sum(w)``, AdamW + global-norm
clipping, in one run:

- JAX: ``train.train_step`` jitted with donated state (parallel "none");
  FLOPs of one step from XLA's cost analysis and the achieved FLOP/s; on a
  GPU also the model FLOP utilisation against the device's peak.
- PyTorch (CPU build): the same layers (ported from ``models.ResNet1D``'s
  ``torch_equivalent``, weights copied from the JAX model and the forward
  outputs checked to agree), same loss, ``torch.optim.AdamW`` +
  ``clip_grad_norm_``. Skipped when torch is missing or on a GPU backend.
- Input pipeline: batches/s of the loop's iterator (``data.batch_iterator``
  via ``train_data.train_batches``: gather, HypUC weights, scaling) plus
  ``Placement.put_batch``, single-threaded; the ratio to the step rate must
  be >= 5.

Medians over ``--repeats`` timed runs of ``--steps`` steps after warm-up.

Usage::

    python experiments/bench_train_step.py [--repeats 5 --steps 5 --threads N]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from hypuc_jax import config as config_lib  # noqa: E402
from hypuc_jax import parallel, train, train_data  # noqa: E402
from _results import check_out, command_line, write_result  # noqa: E402

BATCH, LEADS, TIME = 64, 12, 1000
# Dense peak FLOP/s per device kind (fp32 via TF32 tensor cores where XLA uses them).
PEAK_TFLOPS = {"H100": 494.7, "H200": 494.7, "A100": 156.0, "V100": 15.7, "L4": 60.0}


def _config():
  return config_lib.apply_overrides(config_lib.Config(), [
      "train.batch_size=64", "train.lr=1e-3", "train.warmup_steps=0", "train.parallel=none"])


def _batch(rng):
  x = rng.normal(size=(BATCH, TIME, LEADS)).astype(np.float32)
  y = rng.normal(size=BATCH).astype(np.float32)
  w = rng.uniform(0.2, 5.0, size=BATCH).astype(np.float32)
  return {"x": x, "y": y, "w": w, "mask": np.ones(BATCH, np.float32)}


def _median_rate(run_steps, steps, repeats):
  """Median examples/s and seconds/step over ``repeats`` runs of ``steps`` steps."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    run_steps(steps)
    times.append((time.perf_counter() - t0) / steps)
  med = statistics.median(times)
  return BATCH / med, med


def bench_jax(config, batch, steps, repeats):
  graphdef, state, schedule = train.create_train_state(config, (TIME, LEADS), 10_000)
  placement = parallel.Placement("none")
  state = placement.put_state(state)
  step = placement.compile_step(train.bind_train_step(
      graphdef, train.LossSpec.from_config(config), schedule))
  dev_batch = placement.put_batch(batch)
  compiled = jax.jit(train.bind_train_step(graphdef, train.LossSpec.from_config(config),
                                           schedule)).lower(state, dev_batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan")))
  holder = {"state": state}

  def run(n):
    s = holder["state"]
    for _ in range(n):
      s, m = step(s, dev_batch)
    jax.block_until_ready(m)
    holder["state"] = s

  run(3)                                                  # compile + warm-up
  rate, sec = _median_rate(run, steps, repeats)
  return rate, sec, flops, (graphdef, holder["state"])


def _torch_model(torch, jax_model, config):
  """PyTorch ResNet1D with the layers of models.ResNet1D and its weights."""
  nn = torch.nn
  m = config.model

  def conv(jconv, stride, pad):
    k = np.asarray(jconv.kernel[...])                    # [k, cin, cout]
    c = nn.Conv1d(k.shape[1], k.shape[2], k.shape[0], stride=stride, padding=pad, bias=False)
    c.weight.data = torch.from_numpy(np.ascontiguousarray(k.transpose(2, 1, 0)))
    return c

  def norm(jnorm):
    g = nn.GroupNorm(jnorm.num_groups, jnorm.scale.shape[0], eps=1e-5)
    g.weight.data = torch.from_numpy(np.asarray(jnorm.scale[...]).copy())
    g.bias.data = torch.from_numpy(np.asarray(jnorm.bias[...]).copy())
    return g

  class Block(nn.Module):
    def __init__(self, jb):
      super().__init__()
      stride = jb.conv1.strides[0] if isinstance(jb.conv1.strides, tuple) else jb.conv1.strides
      self.c1, self.n1 = conv(jb.conv1, stride, m.kernel_size // 2), norm(jb.norm1)
      self.c2, self.n2 = conv(jb.conv2, 1, m.kernel_size // 2), norm(jb.norm2)
      self.proj = None
      if jb.proj is not None:
        self.proj = nn.Sequential(conv(jb.proj, stride, 0), norm(jb.proj_norm))

    def forward(self, x):
      h = torch.relu(self.n1(self.c1(x)))
      h = self.n2(self.c2(h))
      return torch.relu(h + (x if self.proj is None else self.proj(x)))

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      self.stem = conv(jax_model.stem, m.stem_stride, m.stem_kernel // 2)
      self.stem_norm = norm(jax_model.stem_norm)
      self.blocks = nn.Sequential(*[Block(b) for b in jax_model.blocks])
      d = jax_model.out.dense
      self.head = nn.Linear(d.kernel.shape[0], d.kernel.shape[1])
      self.head.weight.data = torch.from_numpy(np.asarray(d.kernel[...]).T.copy())
      self.head.bias.data = torch.from_numpy(np.asarray(d.bias[...]).copy())

    def forward(self, x):                                 # x [batch, leads, time]
      h = torch.relu(self.stem_norm(self.stem(x)))
      h = self.blocks(h).mean(dim=2)
      out = self.head(h)
      return out[:, 0], torch.nn.functional.softplus(out[:, 1]) + m.sigma_min

  return Net()


def _torch_optimizer(torch, net, config):
  """``torch.optim.AdamW`` with the run's learning rate and weight decay."""
  return torch.optim.AdamW(net.parameters(), lr=config.train.lr,
                           weight_decay=config.train.weight_decay)


def _torch_step(torch, net, opt, x, y, w, grad_clip):
  """One PyTorch step of the work ``train.train_step`` does: weighted Gaussian NLL
  ``sum(w * nll) / sum(w)``, global-norm clipping, AdamW. x [batch, leads, time]
  (PyTorch's layout); y, w [batch]. Returns the loss."""
  opt.zero_grad(set_to_none=True)
  mu, s = net(x)
  nll = 0.5 * np.log(2 * np.pi) + torch.log(s) + 0.5 * ((y - mu) / s) ** 2
  loss = (w * nll).sum() / w.sum()
  loss.backward()
  torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
  opt.step()
  return float(loss.detach())


def bench_torch(config, batch, graphdef_state, steps, repeats):
  try:
    import torch
  except ImportError:
    return None
  graphdef, state = graphdef_state
  jax_model, _ = nnx.merge(graphdef, jax.device_get(state))
  net = _torch_model(torch, jax_model, config)
  x = torch.from_numpy(np.ascontiguousarray(batch["x"].transpose(0, 2, 1)))
  with torch.no_grad():
    mu_t, s_t = net(x)
  pred = jax_model(jnp.asarray(batch["x"]))
  port_err = float(max(np.max(np.abs(mu_t.numpy() - np.asarray(pred.loc))),
                       np.max(np.abs(s_t.numpy() - np.asarray(pred.scale)))))
  if not port_err < 1e-4:       # the two sides must compute the same network to compare
    raise RuntimeError(f"the PyTorch port's outputs differ from the JAX model's by "
                       f"{port_err:.2e} (> 1e-4): not the same work; fix _torch_model")
  y, w = torch.from_numpy(batch["y"]), torch.from_numpy(batch["w"])
  opt = _torch_optimizer(torch, net, config)

  def run(n):
    for _ in range(n):
      _torch_step(torch, net, opt, x, y, w, config.train.grad_clip)

  run(3)
  rate, sec = _median_rate(run, steps, repeats)
  return rate, sec, port_err, torch.__version__, torch.get_num_threads()


def bench_input(rng, repeats):
  """Batches/s of the loop's input path on 2048 records: ``data.batch_iterator``
  (gather, HypUC weights, scaling) via ``train_data.train_batches``, then
  ``Placement.put_batch``."""
  from hypuc_jax import data, weights
  n = 2048
  x = rng.normal(size=(n, TIME, LEADS)).astype(np.float32)
  y = (4.5 + 0.7 * rng.normal(size=n)).astype(np.float32)
  idx = np.arange(n)
  run = train_data.RunData(x, y.astype(np.float64), {"train": idx},
                           data.Scaler.fit(x, y, idx), weights.fit_weighting("hypuc", y),
                           (TIME, LEADS))
  placement = parallel.Placement("none")
  it = train_data.train_batches(run, 0, BATCH, seed=0)
  k = 20

  def go():
    for _ in range(k):
      b = placement.put_batch(next(it))
    jax.block_until_ready(b)
  go()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    go()
    times.append((time.perf_counter() - t0) / k)
  return 1.0 / statistics.median(times)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
  p.add_argument("--peak-tflops", type=float, default=0.0,
                 help="device peak for MFU (default: table by device kind)")
  p.add_argument("--out", default=None, help="also write the output here (markdown), with "
                 "the command")
  args = p.parse_args(argv)
  check_out(p, args.out)                    # before the benchmark, not after it
  if args.threads and importlib.util.find_spec("torch") is None:
    p.error("--threads: sets PyTorch's threads, but torch is not installed "
            "(pip install torch==2.13.0, the CPU build)")
  rng = np.random.default_rng(0)
  config, batch = _config(), _batch(rng)
  backend, kind = jax.default_backend(), jax.devices()[0].device_kind
  if args.threads:
    import torch
    torch.set_num_threads(args.threads)
  j_rate, j_sec, flops, gs = bench_jax(config, batch, args.steps, args.repeats)
  t = bench_torch(config, batch, gs, args.steps, args.repeats) if backend == "cpu" else None
  in_rate = bench_input(rng, args.repeats)
  step_rate = 1.0 / j_sec
  lines = []

  def out(text=""):
    print(text)
    lines.append(text)

  out(f"backend: {backend} ({kind}), {jax.device_count()} device(s), "
        f"{os.cpu_count()} CPU cores; jax {jax.__version__}")
  out(f"ECG ResNet1D widths={config.model.widths} blocks={config.model.blocks}, batch {BATCH}"
        f" x {TIME} samples x {LEADS} leads, weighted Gaussian NLL, AdamW + clip; median of "
        f"{args.repeats} x {args.steps} steps after warm-up\n")
  out("| implementation | step time (ms) | examples/s | step GFLOP (XLA) | achieved GFLOP/s |")
  out("| --- | ---: | ---: | ---: | ---: |")
  out(f"| JAX jit ({backend}) | {j_sec * 1e3:.1f} | {j_rate:.1f} | {flops / 1e9:.2f} | "
        f"{flops / j_sec / 1e9:.1f} |")
  if t is not None:
    out(f"| PyTorch {t[3]} CPU ({t[4]} threads) | {t[1] * 1e3:.1f} | {t[0]:.1f} | "
          f"{flops / 1e9:.2f} | {flops / t[1] / 1e9:.1f} |")
  out()
  if t is not None:
    out(f"JAX / PyTorch throughput: {j_rate / t[0]:.2f}x (target >= 1.0x, stretch 1.5x); "
          f"port check max |jax - torch| forward = {t[2]:.2e}")
  elif backend == "cpu":
    out("PyTorch not installed: `pip install torch==2.13.0` (CPU build) for the comparison")
  out(f"input pipeline: {in_rate:.1f} batches/s vs train step {step_rate:.1f} steps/s "
        f"-> {in_rate / step_rate:.1f}x (must be >= 5x)")
  if backend == "gpu":
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in kind), 0.0)
    if peak:
      out(f"model FLOP utilisation: {flops / j_sec / (peak * 1e12) * 100:.1f}% of "
            f"{peak} TFLOP/s")
  if args.out:
    cmd = command_line("bench_train_step.py", sys.argv[1:] if argv is None else list(argv))
    write_result(args.out, f"Command: `{cmd}`\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
