import dataclasses

import pytest
import yaml

from ddmops.config import DDM4IP_TASKS, Params, load_params
from ddmops.config.restore import DcdpConfig, TweedieSettings
from ddmops.errors import ConfigError
from ddmops.strict import apply_overrides, flatten, from_dict, to_dict
from tests.conftest import REPO


def test_project_params_load():
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params)
    for task in DDM4IP_TASKS:  # asymmetric operators must not be flipped
        assert getattr(params.train_prior, task).flips is False
    assert params.train_prior.psf_grid.model.position_channels


def test_unknown_key_names_path_and_suggestion(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"train_prior": {"clean": {"batch_sise": 4}}}))
    with pytest.raises(ConfigError) as exc:
        load_params(p)
    msg = str(exc.value)
    assert "train_prior.clean.batch_sise" in msg and "batch_size" in msg and str(p) in msg


@pytest.mark.parametrize("override, fragment", [
    ("degrade.noise_sigma=abc", "expected a number"),
    ("prepare.channels=2", "not one of"),
    ("train_prior.clean.flips=1", "expected true or false"),
    ("degrade.deblur.size=4", "odd"),
    ("learn_operator.deblur.betas=[0.9]", "expected 2 values"),
    ("prepare.test_fraction=1.5", "must lie in"),
    ("invert=3", "expected a mapping"),
    ("invert.deblur.pnp.iterations=-3", "'invert.deblur.pnp': iterations must be > 0"),
    ("restore.inpainting.dcdp.momentum=1.5", "momentum must be in \\[0, 1\\]"),
    ("restore.inpainting.dcdp.tweedie.t_end=900", "dcdp': tweedie: need 0 <= t_end <= t_start"),
    ("restore.inpainting.dcdp.tweedie.lr=-1", "dcdp': tweedie: lr must be > 0"),
    ("learn_operator.deblur.reg.sparse=-0.1", "sparse must be >= 0"),
    ("train_prior.clean.lr=0", "lr must be > 0"),
])
def test_bad_values_rejected(override, fragment):
    data = apply_overrides({}, [override])
    with pytest.raises(ConfigError, match=fragment):
        from_dict(Params, data)


def test_round_trip_params_config_params():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    params = from_dict(Params, raw)
    again = from_dict(Params, to_dict(params))
    assert again == params
    # every key of the file survives the round trip with its value
    flat_file, flat_cfg = flatten(raw), flatten(to_dict(params))
    for key, value in flat_file.items():
        assert flat_cfg[key] == (list(value) if isinstance(value, tuple) else value), key


def test_overrides_parse_yaml_values():
    data = apply_overrides({}, ["a.b=3", "a.c=[1, 2]", "d=true", "e=0.5"])
    assert data == {"a": {"b": 3, "c": [1, 2]}, "d": True, "e": 0.5}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["novalue"])


def test_tweedie_settings_override_only_what_they_set():
    d = from_dict(Params, apply_overrides({}, ["restore.inpainting.dcdp.t_end=100"])).restore.inpainting.dcdp
    assert d.for_mode("ode") == d.for_mode("tweedie") == d
    d = from_dict(DcdpConfig, to_dict(d) | {"tweedie": {"t_start": 150, "t_end": 0}})
    assert d.for_mode("ode") == d
    assert d.for_mode("tweedie") == dataclasses.replace(d, t_start=150, t_end=0, tweedie=TweedieSettings())


def test_configs_are_frozen():
    params = Params()
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.prepare.seed = 3  # type: ignore[misc]


def test_gpu_profile_loads():
    params = load_params(REPO / "params-gpu.yaml")
    assert params.train_prior.clean.patch_size >= 64 and params.train_prior.clean.precision == "bf16"


def test_exponent_floats_accepted_as_written():
    """PyYAML reads 1e-4 as a string (YAML 1.1); DVC's YAML 1.2 as a number: accept both."""
    params = from_dict(Params, apply_overrides({}, ["train_prior.clean.lr=1e-4", "degrade.noise_sigma=2E-2"]))
    assert params.train_prior.clean.lr == 1e-4 and params.degrade.noise_sigma == 0.02
    with pytest.raises(ConfigError, match="expected a number"):
        from_dict(Params, apply_overrides({}, ["train_prior.clean.lr=fast"]))
