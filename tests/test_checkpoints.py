"""CheckpointStore: last N + best retention, exact round trip, fingerprint refusal;
TrainLogger: metrics.jsonl and TensorBoard files, no output off a terminal."""
import io
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hypuc_jax import checkpoints, train_logging


def _state(seed):
  rng = np.random.default_rng(seed)
  return {"params": {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
                     "b": jnp.asarray(rng.normal(size=(4,)), jnp.float32)},
          "count": jnp.asarray(seed, jnp.int32),
          "key": jax.random.key(seed)}


def test_keeps_last_n_plus_best(tmp_path):
  store = checkpoints.CheckpointStore(str(tmp_path), keep=2, fingerprint={"m": 1})
  val = {1: 5.0, 2: 1.0, 3: 4.0, 4: 3.0, 5: 6.0, 6: 7.0}
  for step, v in val.items():
    store.save(step, _state(step), {"step": step}, v)
  assert sorted(store.all_steps()) == [2, 5, 6]           # best (2) + last two
  assert store.best_step() == 2 and store.latest_step() == 6
  store.close()


def test_a_nan_validation_score_never_evicts_the_best(tmp_path):
  # NaN compares false both ways: the best-N policy used to delete the real best (step 1)
  store = checkpoints.CheckpointStore(str(tmp_path), keep=1, fingerprint={"m": 1})
  for step, v in ((1, 0.5), (2, float("nan")), (3, 0.7)):
    store.save(step, _state(step), {}, v)
  assert sorted(store.all_steps()) == [1, 3] and store.best_step() == 1
  store.close()


def test_steps_without_validation_are_kept_only_as_latest(tmp_path):
  store = checkpoints.CheckpointStore(str(tmp_path), keep=1, fingerprint={"m": 1})
  store.save(1, _state(1), {}, 2.0)
  store.save(2, _state(2), {}, None)
  store.save(3, _state(3), {}, None)
  assert sorted(store.all_steps()) == [1, 3]
  assert store.best_step() == 1
  store.close()


def test_round_trip_is_exact_including_prng_keys(tmp_path):
  store = checkpoints.CheckpointStore(str(tmp_path), keep=3, fingerprint={"m": 1})
  state = _state(7)
  store.save(10, state, {"best_step": 10, "val": {"nll": 1.5}}, 1.5)
  restored, meta = store.restore(10, _state(0))
  assert meta == {"best_step": 10, "val": {"nll": 1.5}}
  np.testing.assert_array_equal(restored["params"]["w"], state["params"]["w"])
  np.testing.assert_array_equal(restored["params"]["b"], state["params"]["b"])
  assert int(restored["count"]) == 7
  np.testing.assert_array_equal(jax.random.key_data(restored["key"]),
                                jax.random.key_data(state["key"]))
  np.testing.assert_array_equal(jax.random.normal(restored["key"], (3,)),
                                jax.random.normal(state["key"], (3,)))
  store.close()


def test_foreign_fingerprint_is_refused_unless_overwrite(tmp_path):
  store = checkpoints.CheckpointStore(str(tmp_path), keep=2,
                                      fingerprint={"model": {"widths": [8, 16]}})
  store.save(1, _state(1), {}, 1.0)
  store.close()
  with pytest.raises(ValueError, match=r"different model or config \(model.widths"):
    checkpoints.CheckpointStore(str(tmp_path), keep=2, fingerprint={"model": {"widths": [4]}})
  # Same fingerprint: reopened with the checkpoint.
  same = checkpoints.CheckpointStore(str(tmp_path), keep=2,
                                     fingerprint={"model": {"widths": [8, 16]}})
  assert same.latest_step() == 1
  same.close()
  fresh = checkpoints.CheckpointStore(str(tmp_path), keep=2,
                                      fingerprint={"model": {"widths": [4]}}, overwrite=True)
  assert fresh.latest_step() is None
  fresh.close()


def test_checkpoints_of_other_training_data_are_refused_and_overwrite_starts_afresh(tmp_path):
  store = checkpoints.CheckpointStore(str(tmp_path), keep=2, fingerprint={"m": 1},
                                      data_stamp="aaa")
  store.save(1, _state(1), {}, 1.0)
  store.close()
  assert checkpoints.stored_data_stamp(str(tmp_path)) == "aaa"
  # in its own file: a reader that compares fingerprint.json alone (the previous build's
  # predict) still sees the config's fingerprint only
  assert json.loads((tmp_path / checkpoints.FINGERPRINT_FILE).read_text()) == {"m": 1}
  with pytest.raises(ValueError, match="trained on other data"):
    checkpoints.CheckpointStore(str(tmp_path), keep=2, fingerprint={"m": 1}, data_stamp="bbb")
  for kwargs in ({"data_stamp": "aaa"}, {"read_only": True}):   # same data; readers: no check
    same = checkpoints.CheckpointStore(str(tmp_path), keep=2, fingerprint={"m": 1}, **kwargs)
    assert same.latest_step() == 1
    same.close()
  # --overwrite used to resume a run of the same config (so new data was never trained)
  fresh = checkpoints.CheckpointStore(str(tmp_path), keep=2, fingerprint={"m": 1},
                                      data_stamp="aaa", overwrite=True)
  assert fresh.latest_step() is None
  fresh.close()
  (tmp_path / checkpoints.DATA_STAMP_FILE).write_text("{")
  with pytest.raises(ValueError, match="data_stamp.json: unreadable"):
    checkpoints.stored_data_stamp(str(tmp_path))


def test_overwrite_clears_a_symlinked_checkpoint_folder(tmp_path):
  # checkpoints on another disk behind a symlink: rmtree refused the link itself
  target, link = tmp_path / "scratch", tmp_path / "ckpt"
  target.mkdir()
  link.symlink_to(target)
  store = checkpoints.CheckpointStore(str(link), keep=2, fingerprint={"m": 1})
  store.save(1, _state(1), {}, 1.0)
  store.close()
  assert os.listdir(target)
  fresh = checkpoints.CheckpointStore(str(link), keep=2, fingerprint={"m": 1}, overwrite=True)
  assert fresh.latest_step() is None and link.is_symlink() and target.is_dir()
  fresh.save(2, _state(2), {}, 1.0)
  fresh.close()
  assert sorted(checkpoints.CheckpointStore(str(link), keep=2, fingerprint={"m": 1},
                                            read_only=True).all_steps()) == [2]


def test_fingerprint_is_written_atomically_and_a_torn_one_is_named(tmp_path):
  """Reopening a run with the same config leaves fingerprint.json untouched (no window
  in which a crash could tear it); a torn one (what a crash mid-write used to leave)
  is a ValueError naming the file, for writers and readers alike."""
  store = checkpoints.CheckpointStore(str(tmp_path), keep=2, fingerprint={"m": 1})
  store.save(1, _state(1), {}, 1.0)
  store.close()
  fp = tmp_path / checkpoints.FINGERPRINT_FILE
  before = (fp.stat().st_ino, fp.stat().st_mtime_ns, fp.read_text())
  checkpoints.CheckpointStore(str(tmp_path), keep=2, fingerprint={"m": 1}).close()
  assert (fp.stat().st_ino, fp.stat().st_mtime_ns, fp.read_text()) == before
  assert json.loads(fp.read_text()) == {"m": 1}
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".fingerprint-")]
  fp.write_text("")
  for kwargs in ({}, {"read_only": True}):
    with pytest.raises(ValueError, match="fingerprint.json: unreadable checkpoint fingerprint"):
      checkpoints.CheckpointStore(str(tmp_path), keep=2, fingerprint={"m": 1}, **kwargs)
  fp.write_text("[1]")
  with pytest.raises(ValueError, match="fingerprint.json: expected a JSON object"):
    checkpoints.CheckpointStore(str(tmp_path), keep=2, fingerprint={"m": 1})
  store = checkpoints.CheckpointStore(str(tmp_path), keep=2, fingerprint={"m": 1},
                                      overwrite=True)          # what the error advises
  assert store.latest_step() is None and json.loads(fp.read_text()) == {"m": 1}
  store.close()


def test_bad_keep():
  with pytest.raises(ValueError, match="keep"):
    checkpoints.CheckpointStore("/tmp/unused", keep=0, fingerprint={})


def test_logger_writes_jsonl_and_tensorboard_without_terminal_output(tmp_path):
  out = io.StringIO()                                     # not a TTY
  logger = train_logging.TrainLogger(str(tmp_path), 10, stream=out)
  logger.start(0)
  logger.log(5, {"loss": np.float32(1.25), "lr": 1e-3})
  logger.log(5, {"nll": float("nan")}, prefix="val")
  logger.progress_bar(5, 1.25)
  logger.close()
  assert out.getvalue() == ""
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert lines[0] == {"step": 5, "split": "train", "loss": 1.25, "lr": 1e-3}
  assert lines[1] == {"step": 5, "split": "val", "nll": "nan"}
  scalars, _ = _tb_events(tmp_path / "tb")
  assert scalars[("train/loss", 5)] == 1.25 and scalars[("train/lr", 5)] == pytest.approx(1e-3)
  assert ("val/nll", 5) not in scalars          # a NaN goes to metrics.jsonl only, as "nan"


def _tb_events(tb_dir):
  """({(tag, step): value}, [session-log start steps]) of every event file in
  ``tb_dir``, read back as TFRecords (length, crc, Event proto, crc)."""
  import struct
  from tensorboardX.proto.event_pb2 import Event, SessionLog
  scalars, starts = {}, []
  for name in sorted(n for n in os.listdir(tb_dir) if n.startswith("events.out.tfevents")):
    data, pos = (tb_dir / name).read_bytes(), 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for v in event.summary.value:
        scalars[(v.tag, event.step)] = v.simple_value
      if event.HasField("session_log") and event.session_log.status == SessionLog.START:
        starts.append(event.step)
  return scalars, starts


def test_logged_scalars_are_in_the_event_file_before_close(tmp_path):
  """A kill -9 after a checkpoint does not close the logger: what `log` wrote must
  already be in the file (tensorboardX's writer thread could still hold it, and
  a resume re-logs only later steps). A resume marks its purge step."""
  logger = train_logging.TrainLogger(str(tmp_path), 10, stream=io.StringIO(), fresh=True)
  logger.log(3, {"loss": 0.5})
  logger.log(3, {"mae": 0.25}, prefix="val")
  scalars, starts = _tb_events(tmp_path / "tb")          # not closed: as after a kill -9
  assert scalars == {("train/loss", 3): 0.5, ("val/mae", 3): 0.25} and starts == []
  resumed = train_logging.TrainLogger(str(tmp_path), 10, stream=io.StringIO(), resume_step=3)
  resumed.log(4, {"loss": 0.125})
  scalars, starts = _tb_events(tmp_path / "tb")
  assert scalars[("val/mae", 3)] == 0.25 and scalars[("train/loss", 4)] == 0.125
  assert starts == [4]                                   # TensorBoard drops steps >= 4 before it
  # ... only if the resumed file comes later in name order (how TensorBoard reads a run)
  last = sorted(n for n in os.listdir(tmp_path / "tb") if n.startswith("events.out"))[-1]
  only_last = tmp_path / "last"
  only_last.mkdir()
  shutil.copy(tmp_path / "tb" / last, only_last / last)
  assert _tb_events(only_last) == ({("train/loss", 4): 0.125}, [4])
  resumed.close()
  logger.close()


def test_progress_bar_on_a_terminal(tmp_path, monkeypatch):
  """4 of 10 steps in 8 s (a stubbed clock): 2 s a step, so 6 steps = 12 s to go,
  and 12 of the bar's 30 cells filled."""
  clock = iter([100.0, 108.0])
  monkeypatch.setattr(train_logging.time, "perf_counter", lambda: next(clock))
  out = io.StringIO()
  logger = train_logging.TrainLogger(str(tmp_path), 10, stream=out, progress=True)
  logger.start(0)
  logger.progress_bar(4, 0.5)
  logger.close()
  assert out.getvalue() == "\r[" + "#" * 12 + "." * 18 + "] 4/10 ETA 0:12 loss 0.5000   \n"


def test_optional_defaults_match_a_key_absent_on_the_other_side(tmp_path):
  defaults = {"w": {"apply": "loss"}}
  old = {"w": {"lam": 0.5}}                                 # written before "apply" existed
  checkpoints.CheckpointStore(str(tmp_path), keep=1, fingerprint=old).close()
  new = {"w": {"lam": 0.5, "apply": "loss"}}
  with pytest.raises(ValueError, match=r"w.apply: stored None, now 'loss'"):
    checkpoints.CheckpointStore(str(tmp_path), keep=1, fingerprint=new)   # strict by default
  checkpoints.CheckpointStore(str(tmp_path), keep=1, fingerprint=new,
                              optional_defaults=defaults).close()
  with open(tmp_path / "fingerprint.json") as f:
    assert json.load(f) == new                              # rewritten in the current form
  with pytest.raises(ValueError, match=r"w.apply: stored 'loss', now 'resample'"):
    checkpoints.CheckpointStore(str(tmp_path), keep=1, optional_defaults=defaults,
                                fingerprint={"w": {"lam": 0.5, "apply": "resample"}})


def test_read_only_store_restores_without_writing_or_warning(tmp_path, caplog):
  """predict opens runs read-only: the state comes back exactly, nothing in the
  directory changes, and orbax's restating warnings stay off stderr."""
  import logging
  store = checkpoints.CheckpointStore(str(tmp_path), keep=1, fingerprint={"m": 1})
  store.save(1, _state(1), {"step": 1}, 2.0)
  store.close()
  before = sorted((p, os.path.getmtime(os.path.join(r, p))) for r, _, fs in os.walk(tmp_path)
                  for p in fs)
  level = logging.getLogger("absl").level
  with caplog.at_level(logging.WARNING):
    ro = checkpoints.CheckpointStore(str(tmp_path), keep=1, fingerprint={"m": 1},
                                     read_only=True)
    state, meta = ro.restore(ro.best_step(), _state(0))
    ro.close()
  assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
  np.testing.assert_array_equal(state["params"]["w"], _state(1)["params"]["w"])
  assert meta == {"step": 1}
  after = sorted((p, os.path.getmtime(os.path.join(r, p))) for r, _, fs in os.walk(tmp_path)
                 for p in fs)
  assert after == before
  assert logging.getLogger("absl").level == level          # restored afterwards


def test_resumed_logger_drops_the_steps_it_will_log_again(tmp_path):
  """A crash after step 10 with the last checkpoint at 6: the resumed run logs 7-10
  again, so metrics.jsonl keeps one record per (step, split); a torn last line
  (the crash mid-write) is dropped too."""
  logger = train_logging.TrainLogger(str(tmp_path), 10, fresh=True, progress=False)
  for step in range(1, 11):
    logger.log(step, {"loss": float(step)})
    if step % 6 == 0:
      logger.log(step, {"nll": 0.5}, prefix="val")
  logger.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 11, "spl')
  logger = train_logging.TrainLogger(str(tmp_path), 10, resume_step=6, progress=False)
  for step in range(7, 11):
    logger.log(step, {"loss": float(step) + 0.5})
  logger.close()
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  keys = [(r["step"], r["split"]) for r in records]
  assert len(keys) == len(set(keys))
  assert keys == [(s, "train") for s in range(1, 7)] + [(6, "val")] + [
      (s, "train") for s in range(7, 11)]
  assert [r["loss"] for r in records if r["step"] > 6] == [7.5, 8.5, 9.5, 10.5]


def test_resumed_logger_completes_a_last_line_cut_before_its_newline(tmp_path):
  logger = train_logging.TrainLogger(str(tmp_path), 30, fresh=True, progress=False)
  logger.log(10, {"loss": 1.0})
  logger.log(20, {"loss": 2.0})
  logger.close()
  path = tmp_path / "metrics.jsonl"
  path.write_text(path.read_text().rstrip("\n"))             # crash before the newline
  logger = train_logging.TrainLogger(str(tmp_path), 30, resume_step=20, progress=False)
  logger.log(21, {"loss": 3.0})
  logger.close()
  assert [json.loads(line)["step"] for line in open(path)] == [10, 20, 21]
