"""Config: presets, JSON round trip, overrides with coercion, validation errors."""
import dataclasses
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hypuc_jax import config as config_lib
from hypuc_jax.config import apply_overrides, get_config, validate


@pytest.mark.parametrize("name", ["potassium", "tiny", "lvef", "diabetes"])
def test_presets_are_valid_and_round_trip_through_json(name):
  cfg = get_config(name)
  validate(cfg, n_devices=8)
  text = json.dumps(cfg.to_dict())
  assert config_lib.Config.from_dict(json.loads(text)) == cfg


def test_default_preset_is_potassium():
  assert get_config() == get_config("potassium")
  assert get_config().data.spec.startswith("simulated:potassium")


def test_unknown_preset():
  with pytest.raises(ValueError, match="name"):
    get_config("imagenet")
  for name in (["potassium"], {"preset": "tiny"}, None):    # an experiment file's "preset"
    with pytest.raises(ValueError, match="name: expected one of"):
      get_config(name)


def test_the_bounds_admit_every_preset_and_the_edge_values():
  """The new upper bounds refuse only what fails later: the presets and values at
  the bounds themselves validate."""
  for name in ("potassium", "tiny", "lvef", "diabetes"):
    validate(get_config(name))
  edge = ["calibration.xi=1e-06", "calibration.xi=0.999999999", "corrections.learning_rate=1",
          "train.eval_batch_size=16777216", "corrections.n_estimators=100000",
          "model.widths=8,65536", "weighting.bins=1000000"]
  validate(apply_overrides(get_config("tiny"), edge))


def test_overrides_coerce_types():
  cfg = apply_overrides(get_config("tiny"), [
      "train.lr=2.5e-4", "train.batch_size=16", "model.widths=4, 8",
      "model.blocks=(2, 3)", "loss.learn_noise=false", "weighting.bandwidth=0.25",
      "weighting.max_weight=none", "data.target=k", "regions=[('severe', 6.5, 9.0)]",
      "data.split=0.5,0.25,0.25"])
  assert cfg.train.lr == 2.5e-4 and isinstance(cfg.train.lr, float)
  assert cfg.train.batch_size == 16 and isinstance(cfg.train.batch_size, int)
  assert cfg.model.widths == (4, 8) and cfg.model.blocks == (2, 3)
  assert cfg.loss.learn_noise is False
  assert cfg.weighting.bandwidth == 0.25
  assert cfg.weighting.max_weight is None
  assert cfg.data.target == "k"
  assert cfg.regions == (("severe", 6.5, 9.0),)
  assert cfg.data.split == (0.5, 0.25, 0.25)
  # A rule name stays a string.
  assert apply_overrides(cfg, ["weighting.bandwidth=silverman"]).weighting.bandwidth == "silverman"


def test_epochs_override_takes_effect_over_a_preset_step_count():
  # the tiny preset sets train.steps=12, which silently beat --set train.epochs=N
  tiny = get_config("tiny")
  assert tiny.train.steps == 12
  cfg = apply_overrides(tiny, ["train.epochs=3"])
  assert (cfg.train.epochs, cfg.train.steps) == (3, 0)
  both = apply_overrides(tiny, ["train.epochs=3", "train.steps=7"])   # both given: as written
  assert (both.train.epochs, both.train.steps) == (3, 7)
  assert apply_overrides(tiny, ["train.lr=0.1"]).train.steps == 12


def test_overrides_leave_the_input_unchanged():
  cfg = get_config("tiny")
  apply_overrides(cfg, ["train.lr=1.0"])
  assert cfg == get_config("tiny")


@pytest.mark.parametrize("override, key", [
    ("train.learning_rate=1e-3", "train.learning_rate"),
    ("optimizer.lr=1e-3", "optimizer.lr"),
    ("train.lr.x=1", "train.lr.x"),
    ("train=3", "train"),
    ("train.lr=fast", "train.lr"),
    ("train.batch_size=3.5", "train.batch_size"),
    ("loss.learn_noise=maybe", "loss.learn_noise"),
    ("model.widths=a,b", "model.widths"),
])
def test_bad_overrides_name_the_key(override, key):
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    apply_overrides(get_config("tiny"), [override])


def test_override_without_equals():
  with pytest.raises(ValueError, match="overrides"):
    apply_overrides(get_config("tiny"), ["train.lr"])


@pytest.mark.parametrize("override, key", [
    ("train.lr=-1e-3", "train.lr"),
    ("train.lr=0", "train.lr"),
    ("train.batch_size=12", "train.batch_size"),       # not divisible by 8 devices
    ("train.eval_batch_size=20", "train.eval_batch_size"),
    ("loss.name=cross_entropy", "loss.name"),
    ("weighting.scheme=focal", "weighting.scheme"),
    ("weighting.apply=sample", "weighting.apply"),
    ("train.parallel=fsdp", "train.parallel"),
    ("model.kind=transformer", "model.kind"),
    ("model.blocks=0,1", "model.blocks"),
    ("model.kernel_size=4", "model.kernel_size"),
    ("model.dropout=1.0", "model.dropout"),
    ("loss.beta=1.5", "loss.beta"),
    ("loss.beta=-0.5", "loss.beta"),
    ("data.split=0.5,0.5,0.5", "data.split"),
    ("weighting.lam=-0.5", "weighting.lam"),
    ("weighting.bandwidth=wide", "weighting.bandwidth"),
    ("weighting.lds_ks=4", "weighting.lds_ks"),
    ("calibration.xi=1.5", "calibration.xi"),
    ("corrections.target=y", "corrections.target"),
    ("train.select_on=mae", "train.select_on"),
    ("weighting.lam=inf", "weighting.lam"),
    ("weighting.lam=1e8", r"weighting.lam: expected a float in \[0, 100\]"),
    ("train.lr=nan", "train.lr"),
    ("data.split=0.8,0.2,0", "data.split"),
    ("regions=[('few', 1.0, 2.0)]", r"regions\[0\]"),
    ("regions=[('overall', 1.0, 2.0)]", r"regions\[0\]"),
    ("train.seed=-1", "train.seed"),
    ("data.seed=4294967296", "data.seed"),
    ("corrections.seed=4294967296", "corrections.seed"),
    ("calibration.quantile=exact", "calibration.quantile"),
    ("regions=[('a', 1.0, 2.0), ('a', 3.0, 4.0)]", r"regions\[0\]"),
    ("corrections.enabled=false", "corrections.enabled"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints"),
    ("regions=[('bad', 5.0, 1.0)]", r"regions\[0\]"),
    # values that validated but failed only after training had replaced a run's files
    ("train.eval_batch_size=100000000000000000000", r"train.eval_batch_size: expected a number <= 16777216"),
    ("calibration.xi=1e-300", r"calibration.xi: expected a coverage in \[1e-06, 1 - 1e-09\]"),
    ("calibration.xi=0.9999999999999", "calibration.xi"),
    ("corrections.learning_rate=10", r"corrections.learning_rate: expected a number in \(0, 1\]"),
    ("weighting.bins=100000000000000000000", "weighting.bins"),
    ("corrections.n_estimators=100000000000000000000", "corrections.n_estimators"),
    ("model.widths=8,1000000000000000000000000000000", "model.widths"),
    ("model.blocks=1,100000", "model.blocks"),
])
def test_validate_names_the_bad_key(override, key):
  cfg = apply_overrides(get_config("tiny"), [override])
  with pytest.raises(ValueError, match=key.replace(".", r"\.") if "[" not in key else key):
    validate(cfg, n_devices=8)


@pytest.mark.parametrize("text, want", [
    ("hyper=5.5:6.5", (("hyper", 5.5, 6.5),)),
    ("hyper=5.5:, hypo=:3.5", (("hyper", 5.5, math.inf), ("hypo", -math.inf, 3.5))),
    ('[["hyper", 5.5, null]]', (("hyper", 5.5, math.inf),)),    # as config.json stores it
    ("[('hyper', None, 3.0)]", (("hyper", -math.inf, 3.0),)),
    ("[('hyper', 5.5, 'inf')]", (("hyper", 5.5, math.inf),)),
    ("", ()),
])
def test_regions_override_takes_the_region_flag_form_and_the_stored_form(text, want):
  # `hypuc run` has no --region: --set regions= is its only way to add one
  assert apply_overrides(get_config("tiny"), [f"regions={text}"]).regions == want


@pytest.mark.parametrize("text, match", [
    ("hi,5,6", r"regions: expected NAME=LOW:HIGH items .* or a list .*\(item 'hi'\)"),
    ("hi=6:5", "regions: expected LOW < HIGH"),
    ("hi=a:3", "regions: expected NAME=LOW:HIGH, got 'hi=a:3'"),
    ("[1, 2]", r"regions: expected NAME=LOW:HIGH items .* or a list \[\[name, low, high\]"),
    ("[('a', 1.0", r"regions: expected NAME=LOW:HIGH items"),
])
def test_regions_override_names_both_forms(text, match):
  with pytest.raises(ValueError, match=match):
    apply_overrides(get_config("tiny"), [f"regions={text}"])


def test_beta_needs_a_likelihood_loss():
  for name in ("nll", "laplace"):
    validate(apply_overrides(get_config("tiny"), [f"loss.name={name}", "loss.beta=0.5"]))
  cfg = apply_overrides(get_config("tiny"), ["loss.name=huber", "loss.beta=0.5"])
  with pytest.raises(ValueError, match=r"loss\.beta.*0 unless loss\.name is nll or laplace"):
    validate(cfg)


def test_defer_needs_loss_weights():
  for scheme in ("hypuc", "none"):                    # none: no effect (train.py)
    validate(apply_overrides(get_config("tiny"), ["weighting.defer=0.5",
                                                  f"weighting.scheme={scheme}"]))
  for extra, expected in ((["weighting.defer=1.0"], "a fraction of the steps in \\[0, 1\\)"),
                          (["weighting.defer=-0.1"], "a fraction of the steps in \\[0, 1\\)"),
                          (["weighting.defer=0.5", "weighting.apply=resample"],
                           "0 unless weighting.apply is loss")):
    with pytest.raises(ValueError, match=f"weighting\\.defer.*{expected}"):
      validate(apply_overrides(get_config("tiny"), extra))


def test_batch_divisibility_only_matters_when_data_parallel():
  cfg = apply_overrides(get_config("tiny"), ["train.batch_size=12", "train.eval_batch_size=12"])
  validate(cfg, n_devices=1)
  validate(apply_overrides(cfg, ["train.parallel=none"]), n_devices=8)
  with pytest.raises(ValueError, match="train.batch_size"):
    validate(apply_overrides(cfg, ["train.parallel=pmap"]), n_devices=8)


def test_several_processes_need_data_parallel_training_and_divisible_batches():
  # parallel=none trained each process alone (and hung at the first evaluation); an eval
  # batch not divisible by the process count failed only at the first evaluation
  cfg = apply_overrides(get_config("tiny"), ["train.batch_size=16", "train.eval_batch_size=16"])
  with pytest.raises(ValueError, match=r"train\.parallel: expected 'sharding' or 'pmap' with 2"):
    validate(apply_overrides(cfg, ["train.parallel=none"]), n_devices=4, n_processes=2)
  with pytest.raises(ValueError, match=r"train\.eval_batch_size: expected a multiple of the "
                                       r"process count 2"):
    validate(apply_overrides(cfg, ["train.parallel=pmap", "train.eval_batch_size=25"]),
             n_devices=4, n_processes=2)
  validate(apply_overrides(cfg, ["train.parallel=pmap"]), n_devices=4, n_processes=2)
  validate(apply_overrides(cfg, ["train.parallel=none"]), n_devices=1)   # one process: fine


def test_bmc_validates_in_every_parallel_mode():
  # refused under pmap while its step saw only each device's slice; the pmap step now
  # gathers the global batch (tests/test_parallel.py checks it equals the single device,
  # and test_pmap_step_gives_an_in_batch_loss_the_global_batch that it trains)
  cfg = apply_overrides(get_config("tiny"), ["loss.name=bmc"])
  for mode in ("none", "sharding", "pmap"):
    checked = validate(apply_overrides(cfg, [f"train.parallel={mode}"]), n_devices=8)
    assert (checked.loss.name, checked.train.parallel) == ("bmc", mode)


def test_from_dict_rejects_unknown_keys():
  d = get_config("tiny").to_dict()
  d["train"]["momentum"] = 0.9
  with pytest.raises(ValueError, match=r"train\.momentum"):
    config_lib.Config.from_dict(d)


def test_resolve_parallel():
  assert config_lib.resolve_parallel("auto", 1) == "none"
  assert config_lib.resolve_parallel("auto", 8) == "sharding"
  assert config_lib.resolve_parallel("pmap", 8) == "pmap"


@settings(max_examples=25, deadline=None)
@given(lr=st.floats(1e-6, 1.0), bs=st.integers(1, 64).map(lambda k: 8 * k),
       widths=st.lists(st.integers(1, 256), min_size=1, max_size=4))
def test_override_round_trip(lr, bs, widths):
  cfg = apply_overrides(get_config("tiny"), [
      f"train.lr={lr!r}", f"train.batch_size={bs}",
      "model.widths=" + ",".join(map(str, widths)),
      "model.blocks=" + ",".join("1" for _ in widths)])
  assert (cfg.train.lr, cfg.train.batch_size, cfg.model.widths) == (lr, bs, tuple(widths))
  assert config_lib.Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
  validate(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, eval_batch_size=bs)), 8)


def test_corrections_seed_counts_every_member():
  """Members are seeded seed, ..., seed + n_models - 1: all must be valid seeds."""
  last = 2 ** 32 - 1
  validate(apply_overrides(get_config("tiny"), [f"corrections.seed={last}"]))
  with pytest.raises(ValueError, match=r"corrections\.seed: .*seed \+ n_models - 1"):
    validate(apply_overrides(get_config("tiny"), [f"corrections.seed={last}",
                                                  "corrections.n_models=2"]))


def test_open_region_bounds_round_trip_as_strict_json():
  """+-inf bounds become null (JSON has no Infinity) and come back as +-inf; a file
  written before (with the non-standard Infinity token) still loads."""
  cfg = dataclasses.replace(get_config("tiny"),
                            regions=(("low", -math.inf, 3.5), ("high", 5.5, math.inf)))
  text = json.dumps(cfg.to_dict(), allow_nan=False)          # raises on NaN / Infinity
  assert json.loads(text)["regions"] == [["low", None, 3.5], ["high", 5.5, None]]
  back = config_lib.Config.from_dict(json.loads(text))
  assert back == cfg and back.regions[0][1] == -math.inf and back.regions[1][2] == math.inf
  old = json.loads(json.dumps(dataclasses.asdict(cfg)))        # Infinity tokens, as before
  assert config_lib.Config.from_dict(old) == cfg


def test_model_shape_checks_follow_the_backbone():
  """blocks must match widths for resnet1d (here or, for kind=auto, once the data
  are known); an MLP ignores blocks and may have no hidden layer (a linear model)."""
  from hypuc_jax import train

  base = get_config("tiny")
  with pytest.raises(ValueError, match=r"model\.blocks"):
    validate(apply_overrides(base, ["model.kind=resnet1d", "model.blocks=1"]))
  auto = validate(apply_overrides(base, ["model.blocks=1"]))          # kind=auto: data decide
  with pytest.raises(ValueError, match=r"^model\.blocks"):
    train.check_model_fits(auto, (100, 12))                             # signals: a ResNet
  diabetes = get_config("diabetes")
  validate(apply_overrides(diabetes, ["model.widths=128,64,32"]))
  linear = validate(apply_overrides(diabetes, ["model.widths=()", "model.blocks=()"]))
  train.check_model_fits(linear, (10,))


@pytest.mark.parametrize("field, value", [("batch_size", "64"), ("lr", "1e-3"),
                                          ("batch_size", 64.5), ("seed", 1.5),
                                          ("batch_size", True), ("epochs", None),
                                          ("seed", np.int64(3))])
def test_configs_built_in_python_are_type_checked(field, value):
  """dataclasses.replace skips the override coercion; validate names the key."""
  base = get_config("tiny")
  cfg = dataclasses.replace(base, train=dataclasses.replace(base.train, **{field: value}))
  with pytest.raises(ValueError, match=rf"train\.{field}"):
    validate(cfg)


def test_from_dict_names_keys_of_wrongly_typed_values():
  for d, key in (({"train": {"batch_size": None}}, "train.batch_size"),
                 ({"train": {"batch_size": [1]}}, "train.batch_size"),
                 ({"train": None}, "train:")):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
      config_lib.Config.from_dict(d)
  with pytest.raises(ValueError, match=r"model\.widths"):
    apply_overrides(get_config("tiny"), ["model.widths=(32, None)"])


def test_eval_batch_needs_the_device_multiple_only_when_sharded():
  cfg = apply_overrides(get_config("tiny"), ["train.parallel=pmap", "train.eval_batch_size=63"])
  validate(cfg, n_devices=2)                       # pmap evaluates on one device
  with pytest.raises(ValueError, match=r"train\.eval_batch_size"):
    validate(apply_overrides(cfg, ["train.parallel=sharding"]), n_devices=2)


def test_tuple_fields_are_type_checked_element_wise():
  base = get_config("tiny")
  cfg = dataclasses.replace(base, model=dataclasses.replace(base.model, widths=(8.0, 16.0)))
  with pytest.raises(ValueError, match=r"model\.widths"):
    validate(cfg)
  validate(dataclasses.replace(base, train=dataclasses.replace(base.train, lr=1)))  # int for float


def test_region_flag_and_set_regions_together_are_refused():
  # --set regions= replaced the --region items: a named region vanished silently.
  from hypuc_jax import run_config
  with pytest.raises(ValueError, match=r"--region and --set regions=: both give"):
    run_config.make_config("tiny", regions=["a=1:2"], overrides=["regions=b=3:4"])
  assert run_config.make_config("tiny", regions=["a=1:2"]).regions[-1] == ("a", 1.0, 2.0)
  assert run_config.make_config("tiny", overrides=["regions=b=3:4"]).regions == (("b", 3.0, 4.0),)


@pytest.mark.parametrize("region", [
    ("hyper", False, 9.0),                   # written, then every later stage refused it
    (7, 1.0, 2.0), ("hi", "5.5", "9"), ("hi", 5.5, None), ("hi", 5.5),
    ("hi", np.bool_(True), 9.0),
])
def test_python_built_regions_are_type_checked(region):
  cfg = dataclasses.replace(get_config("tiny"), regions=(region,))
  with pytest.raises(ValueError, match=r"regions\[0\]: expected \(name, low, high\)"):
    validate(cfg, 1, 1)


@pytest.mark.parametrize("regions", [
    (("hyper", np.float32(5.5), math.inf),),      # not JSON: train crashed writing config.json
    (("hyper", np.float64(5.5), np.inf),),        # np.percentile's type
    [("hyper", 5.5, math.inf)], (["hyper", 5.5, math.inf],),      # lists
])
def test_python_built_regions_are_stored_as_floats(regions):
  cfg = dataclasses.replace(get_config("tiny"), regions=regions)
  assert validate(cfg, 1, 1).regions == (("hyper", 5.5, math.inf),)
  assert all(type(v) is float for v in cfg.regions[0][1:])
  assert config_lib.Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("name", ["None", "NULL", "none"])
def test_a_target_column_named_none_survives_the_flag_and_config_json(name):
  # Override text spells None as "none"/"null"; a column name is not override text,
  # and config.json writes a missing target as null, so its strings stay strings.
  from hypuc_jax import run_config
  cfg = run_config.make_config("tiny", target=name)
  assert cfg.data.target == name
  again = config_lib.Config.from_dict(json.loads(json.dumps(cfg.to_dict())))
  assert again == cfg and again.data.target == name
  assert apply_overrides(get_config("tiny"), ["data.target=none"]).data.target is None
  d = get_config("tiny").to_dict()
  d["data"]["target"] = None                                  # JSON null: no target
  assert config_lib.Config.from_dict(d).data.target is None
