"""Training logs: ``DIR/metrics.jsonl``, TensorBoard events, a progress bar.

Only process 0 writes. The progress bar (step, ETA, live loss) is drawn
only when stdout is a terminal; otherwise nothing is printed per step.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import sys
import time
from typing import Any, TextIO

import jax

from hypuc_jax._files import remove_path, write_text_atomic


class TrainLogger:
  """Writes one JSON line + TensorBoard scalars per logged step.

  Args:
    workdir: run directory; files go to ``workdir/metrics.jsonl`` and
      ``workdir/tb/``.
    total_steps: planned number of steps (for the ETA).
    stream: where the progress bar goes (default ``sys.stdout``).
    progress: force the bar on/off (default: only when ``stream`` is a TTY).
    fresh: start new logs (a run from step 0) instead of appending to a
      resumed run's.
    resume_step: when appending, the checkpoint step the run resumes from:
      records of later steps (logged before a crash, and about to be logged
      again) are dropped from metrics.jsonl and purged from TensorBoard.
  """

  def __init__(self, workdir: str, total_steps: int, *, stream: TextIO | None = None,
               progress: bool | None = None, fresh: bool = False, resume_step: int = 0):
    self.enabled = jax.process_index() == 0
    self.total_steps = int(total_steps)
    self.stream = stream or sys.stdout
    self.progress = (bool(getattr(self.stream, "isatty", lambda: False)())
                     if progress is None else progress) and self.enabled
    self._start_time = None
    self._start_step = 0
    self._jsonl = None
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      tb_dir = os.path.join(workdir, "tb")
      if fresh:
        remove_path(tb_dir)          # a link (events kept elsewhere) stays, emptied
      path = os.path.join(workdir, "metrics.jsonl")
      if not fresh and os.path.exists(path):
        _truncate_after(path, int(resume_step))
      self._jsonl = open(path, "w" if fresh else "a")
      self._tb = _ScalarEvents(tb_dir, purge_step=None if fresh else int(resume_step) + 1)

  def start(self, step: int) -> None:
    """Marks the wall-clock start at ``step`` (after the first compiled step)."""
    self._start_time, self._start_step = time.perf_counter(), int(step)

  def log(self, step: int, metrics: dict[str, Any], prefix: str = "train") -> None:
    """Appends ``{"step", "split", **metrics}`` to metrics.jsonl and TensorBoard."""
    if not self.enabled:
      return
    record = {"step": int(step), "split": prefix}
    record.update({k: _jsonable(v) for k, v in metrics.items()})
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for key, value in record.items():
      if key not in ("step", "split") and isinstance(value, (int, float)):
        self._tb.scalar(f"{prefix}/{key}", value, int(step))
    self._tb.flush()

  def progress_bar(self, step: int, loss: float | None) -> None:
    """Redraws the bar (TTY only): ``[#####.....] step/total ETA loss``."""
    if not self.progress:
      return
    frac = min(1.0, step / max(self.total_steps, 1))
    eta = "?"
    if self._start_time is not None and step > self._start_step:
      rate = (time.perf_counter() - self._start_time) / (step - self._start_step)
      eta = _format_seconds(rate * max(self.total_steps - step, 0))
    width = 30
    bar = "#" * int(frac * width) + "." * (width - int(frac * width))
    shown = "nan" if loss is None else f"{loss:.4f}"
    self.stream.write(f"\r[{bar}] {step}/{self.total_steps} ETA {eta} loss {shown}   ")
    self.stream.flush()

  def close(self) -> None:
    """Ends the progress bar's line and closes metrics.jsonl and the TensorBoard file."""
    if self.progress:
      self.stream.write("\n")
      self.stream.flush()
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


_EVENT_FILES = itertools.count()


class _ScalarEvents:
  """TensorBoard scalars written to the event file by the caller, so that
  ``flush`` puts every logged value in the file. tensorboardX's SummaryWriter
  queues events to a thread, and a kill -9 right after a checkpoint lost the
  validation scalars of that step for good (a resume purges and re-logs only
  later steps). A resume (``purge_step``) tells TensorBoard to drop the
  events at and after that step from the earlier files, as SummaryWriter's
  ``purge_step`` does.
  """

  def __init__(self, logdir: str, purge_step: int | None = None):
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto.event_pb2 import Event, SessionLog
    from tensorboardX.summary import scalar
    os.makedirs(logdir, exist_ok=True)
    # The name holds the second it was opened in; TensorBoard reads a run's files
    # in name order, so a resumed process (or a second logger) opened in the same
    # second must sort after the first (its purge marker then applies): the
    # zero-padded time in ns, then the pid and a count for uniqueness.
    self._writer = EventsWriter(os.path.join(logdir, "events"),
                                f".{time.time_ns():020d}.{os.getpid()}.{next(_EVENT_FILES)}")
    self._event, self._summary = Event, scalar
    if purge_step is not None:
      self._writer.write_event(Event(step=purge_step, file_version="brain.Event:2"))
      self._writer.write_event(Event(step=purge_step,
                                     session_log=SessionLog(status=SessionLog.START)))

  def scalar(self, tag: str, value: float, step: int) -> None:
    self._writer.write_event(self._event(wall_time=time.time(), step=int(step),
                                         summary=self._summary(tag, value)))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def throughput(examples: int, seconds: float) -> float:
  """Examples per second (0 when no time elapsed)."""
  return float(examples) / seconds if seconds > 0 else 0.0


def _jsonable(v: Any) -> Any:
  if hasattr(v, "item"):
    v = v.item()
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)
  return v


def _format_seconds(s: float) -> str:
  s = int(round(s))
  return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _truncate_after(path: str, step: int) -> None:
  """Keeps the records of metrics.jsonl up to ``step`` (atomically rewritten)."""
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  keep = []
  for line in lines:
    try:
      if int(json.loads(line)["step"]) <= step:
        keep.append(line if line.endswith("\n") else line + "\n")
    except (ValueError, KeyError, TypeError):      # a torn last line from a crash
      continue
  if keep == lines:                            # nothing dropped, last line complete
    return
  write_text_atomic(path, "".join(keep), prefix=".metrics-")
