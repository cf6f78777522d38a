"""Spec format: deterministic JSON round trip, validation messages that name the field."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dualrate.exporter.errors import SpecError
from dualrate.exporter.spec import Spec
from tests.conftest import tiny_spec


@pytest.fixture(scope="module")
def spec(pair):
    return tiny_spec(pair, num_steps=12, refresh_params={"k": 3, "phase": 0}, guidance=2.0)


def test_json_round_trip_is_bit_identical(spec):
    text = spec.to_json()
    back, warns = Spec.from_json(text)
    assert warns == []
    assert back == spec
    assert back.to_json() == text
    for key in ("t", "logsnr", "alpha", "sigma", "coef_z", "coef_x0", "coef_noise", "model_time"):
        a, b = spec.sampler.tables.array(key), back.sampler.tables.array(key)
        assert a.tobytes() == b.tobytes()


def test_json_is_sorted_and_uses_documented_field_names(spec):
    data = json.loads(spec.to_json())
    assert list(data) == sorted(data)
    tables = data["sampler"]["tables"]
    assert sorted(tables) == ["alpha", "coef_noise", "coef_x0", "coef_z", "logsnr", "model_time", "sigma", "t"]
    assert len(tables["t"]) == 13 and len(tables["coef_z"]) == 12 and len(tables["model_time"]) == 12
    assert tables["model_time"] == tables["logsnr"][:12]          # time_input logsnr: the networks get logsnr[i]
    assert data["dual_rate"]["resolved_refresh_steps"] == [0, 3, 6, 9]
    assert data["spec_version"].startswith("2.")
    model = data["model"]
    assert "num_classes" not in model and "null_class" not in model
    assert model["conditioning"] == [{"name": "class_id", "shape": [], "dtype": "int64", "null_kind": "value",
                                      "null_value": 10.0, "null_file": None, "num_classes": 10}]
    assert [(i["name"], i["feeds"]) for i in model["encoder"]["inputs"]] == [
        ("z", "sample"), ("logsnr", "time"), ("class_id", "cond:class_id")]
    assert [(i["name"], i["feeds"]) for i in model["denoiser"]["inputs"]] == [
        ("z", "sample"), ("logsnr", "time"), ("logsnr_ctx", "time_ctx"), ("class_id", "cond:class_id"),
        ("feat0", "feature:feat0"), ("feat1", "feature:feat1")]
    assert all(o["feeds"] == "" for o in model["encoder"]["outputs"] + model["denoiser"]["outputs"])
    assert model["decoder"] is None


def test_final_step_returns_x0(spec):
    tab = spec.sampler.tables
    assert (tab.coef_z[-1], tab.coef_x0[-1], tab.coef_noise[-1]) == (0.0, 1.0, 0.0)


def _mutate(spec, path, value):
    data = json.loads(spec.to_json())
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


_DELETE = object()


@pytest.mark.parametrize("path,value,message", [
    (("sampler", "num_steps"), "12", "sampler.num_steps: expected an integer"),
    (("sampler", "eta"), True, "sampler.eta: expected a number"),
    (("model", "sample_shape"), "1x8x8", "model.sample_shape: expected a list"),
    (("sampler", "tables", "coef_z"), [0.5] * 11, "sampler.tables.coef_z has 11 entries; expected 12"),
    (("sampler", "tables", "logsnr"), _DELETE, "sampler.tables.logsnr: required field is missing"),
    (("dual_rate", "resolved_refresh_steps"), [1, 3], "must start with step 0"),
    (("dual_rate", "resolved_refresh_steps"), [0, 3, 12], "out of range for 12 steps"),
    (("dual_rate", "resolved_refresh_steps"), [0, 3, 3], "strictly increasing"),
    (("spec_version",), "3.0.0", "spec_version 3.0.0 has major version 3"),
    (("spec_version",), "one", "expected a semantic version"),
    (("sampler", "type"), "euler", "sampler.type is 'euler'"),
    (("guidance", "scale"), -1.0, "guidance.scale is -1.0"),
    (("noise", "rng", "kind"), "mt19937", "noise.rng.kind is 'mt19937'"),
])
def test_invalid_spec_names_the_field(spec, path, value, message):
    with pytest.raises(SpecError, match=None) as info:
        Spec.from_dict(_mutate(spec, path, value))
    assert message in str(info.value)


def test_non_monotone_grid_is_rejected(spec):
    data = json.loads(spec.to_json())
    t = data["sampler"]["tables"]["t"]
    t[4], t[5] = t[5], t[4]
    with pytest.raises(SpecError, match=r"sampler.tables.t must decrease strictly.*t\[4\]"):
        Spec.from_dict(data)


def test_edited_coefficient_is_detected(spec):
    data = json.loads(spec.to_json())
    data["sampler"]["tables"]["coef_x0"][3] *= 1.001
    with pytest.raises(SpecError, match=r"sampler.tables.coef_x0\[3\].*inconsistent"):
        Spec.from_dict(data)


def test_edited_logsnr_against_schedule_is_detected(spec):
    data = json.loads(spec.to_json())
    lam = data["sampler"]["tables"]["logsnr"]
    lam[2] += 1e-3
    # keep alpha/sigma/coefs consistent with the edit so only the schedule check can see it
    from dualrate.exporter.sampler_tables import build_tables
    tabs = build_tables(np.array(data["sampler"]["tables"]["t"]), np.array(lam), "ancestral", 1.0, "return_x0")
    data["sampler"]["tables"].update({k: [float(x) for x in v] for k, v in tabs.items()})
    data["sampler"]["tables"]["model_time"] = lam[:-1]        # the networks' time input follows logsnr (time_input)
    with pytest.raises(SpecError, match=r"sampler.tables.logsnr\[2\].*process.schedule"):
        Spec.from_dict(data)


def test_unknown_fields_warn_or_fail_in_strict_mode(spec):
    data = json.loads(spec.to_json())
    data["sampler"]["sigma_data"] = 0.5
    _, warns = Spec.from_dict(data)
    assert warns == ["sampler.sigma_data: unknown field (ignored)"]
    with pytest.raises(SpecError, match=r"sampler.sigma_data: unknown field \(strict mode\)"):
        Spec.from_dict(data, strict=True)


def test_nan_constant_is_rejected(spec):
    text = spec.to_json().replace('"eta": 1.0', '"eta": NaN')
    with pytest.raises(SpecError, match="NaN, which is not valid JSON"):
        Spec.from_json(text)


def test_ancestral_eta_must_be_one(spec):
    with pytest.raises(SpecError, match="exactly 1 for ancestral"):
        Spec.from_dict(_mutate(spec, ("sampler", "eta"), 0.5))


# --------------------------------------------------------------------------- spec 2.0: versions and roles

def _v1_document(spec):
    """A 1.x spec as the previous dualrate wrote it: inputs bound by position (no ``feeds``),
    ``model.num_classes``/``null_class`` instead of ``model.conditioning``, no ``tables.model_time``."""
    data = json.loads(spec.to_json())
    data["spec_version"] = "1.0.0"
    model = data["model"]
    del model["conditioning"], model["decoder"], model["time_input"]
    model.update(num_classes=10, null_class=10)
    for graph in ("encoder", "denoiser"):
        for tio in model[graph]["inputs"] + model[graph]["outputs"]:
            del tio["feeds"]
    del data["sampler"]["tables"]["model_time"]
    return data


@pytest.mark.parametrize("strict", [False, True])
def test_v1_spec_is_refused_with_one_line_saying_to_re_export(spec, strict, tmp_path):
    data = _v1_document(spec)
    for load in (lambda: Spec.from_dict(data, strict=strict), lambda: Spec.from_json(json.dumps(data), strict=strict)):
        with pytest.raises(SpecError) as info:
            load()
        msg = str(info.value)
        assert "\n" not in msg
        # the version is named before any field of the old layout (num_classes, missing feeds) is
        assert msg.startswith("spec_version 1.0.0 ")
        assert "inputs bound by role" in msg and "Re-export the bundle" in msg
    (tmp_path / "spec.json").write_text(json.dumps(data))
    with pytest.raises(SpecError, match=r"^spec_version 1\.0\.0 .*Re-export the bundle"):
        Spec.load(tmp_path / "spec.json", strict=strict)


def test_current_major_version_with_another_minor_is_read(spec):
    data = json.loads(spec.to_json())
    data["spec_version"] = "2.7.1"
    back, warns = Spec.from_dict(data, strict=True)
    assert warns == [] and back.spec_version == "2.7.1" and back.model == spec.model


def _input(graph, name):
    return lambda data: next(i for i in data["model"][graph]["inputs"] if i["name"] == name)


ROLE_CASES = {
    # a role no spec knows
    "unknown-role": ("encoder", "logsnr", {"feeds": "timestep"},
                     "model.encoder input 'logsnr' is fed 'timestep'; "),
    "unknown-role-lists-the-allowed": ("encoder", "logsnr", {"feeds": "timestep"},
                                       "an input of the encoder is fed one of cond:class_id, sample, time"),
    "empty-role": ("denoiser", "z", {"feeds": ""}, "model.denoiser input 'z' is fed ''"),
    "undeclared-conditioning": ("encoder", "class_id", {"feeds": "cond:label"},
                                "model.encoder input 'class_id' is fed 'cond:label'"),
    # roles the graph cannot take
    "feature-on-encoder": ("encoder", "z", {"feeds": "feature:feat0"}, "model.encoder input 'z' is fed 'feature:feat0'"),
    "time-ctx-on-encoder": ("encoder", "logsnr", {"feeds": "time_ctx"},
                            "model.encoder input 'logsnr' is fed 'time_ctx'"),
    # a feature the encoder does not produce
    "missing-feature": ("denoiser", "feat1", {"feeds": "feature:feat9"},
                        "model.denoiser input 'feat1' is fed 'feature:feat9'; an input of the denoiser is fed one of "
                        "cond:class_id, feature:feat0, feature:feat1, sample, time, time_ctx"),
    # one role, two inputs
    "role-twice": ("denoiser", "logsnr_ctx", {"feeds": "time"},
                   "model.denoiser input 'logsnr_ctx': role 'time' feeds two inputs; one input per role"),
    "feature-twice": ("denoiser", "feat1", {"feeds": "feature:feat0"},
                      "model.denoiser input 'feat1': role 'feature:feat0' feeds two inputs"),
    # time inputs are [batch]
    "time-rank-2": ("encoder", "logsnr", {"shape": ["batch", 1]},
                    "model.encoder input 'logsnr' (time) is float32 ['batch', 1]; a time input is [batch] of "
                    "float32, float64, int64, int32"),
    "time-ctx-rank-0": ("denoiser", "logsnr_ctx", {"shape": []},
                        "model.denoiser input 'logsnr_ctx': shape [] must start with the batch axis"),
    "time-dtype": ("denoiser", "logsnr_ctx", {"dtype": "bool"},
                   "model.denoiser input 'logsnr_ctx' (time_ctx) is bool ['batch']; a time input is [batch]"),
    # what a role feeds fixes the input's dtype and per-sample shape
    "sample-shape": ("encoder", "z", {"shape": ["batch", 3, 8, 8]},
                     "model.encoder input 'z' (sample) is float32 ['batch', 3, 8, 8]; expected float32 [batch, 1, 8, 8]"),
    "cond-dtype": ("encoder", "class_id", {"dtype": "float32"},
                   "model.encoder input 'class_id' (cond:class_id) is float32 ['batch']; expected int64 [batch]"),
    "feature-shape": ("denoiser", "feat0", {"shape": ["batch", 16, 4, 4]},
                      "model.denoiser input 'feat0' (feature:feat0) is float32 ['batch', 16, 4, 4]; expected float32 "
                      "[batch, 16, 8, 8]"),
}


@pytest.mark.parametrize("case", sorted(ROLE_CASES))
def test_role_binding_errors_name_the_field(spec, case):
    graph, name, edit, message = ROLE_CASES[case]
    data = json.loads(spec.to_json())
    _input(graph, name)(data).update(edit)
    with pytest.raises(SpecError) as info:
        Spec.from_dict(data)
    assert message in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


def test_a_network_must_read_the_sample_and_the_encoder_must_emit_a_feature(spec):
    data = json.loads(spec.to_json())
    data["model"]["denoiser"]["inputs"] = [i for i in data["model"]["denoiser"]["inputs"] if i["feeds"] != "sample"]
    with pytest.raises(SpecError, match="model.denoiser takes no input fed 'sample'; the denoiser must read the sample"):
        Spec.from_dict(data)
    data = json.loads(spec.to_json())
    data["model"]["encoder"]["outputs"] = []
    with pytest.raises(SpecError, match="model.encoder.outputs is empty"):
        Spec.from_dict(data)


def test_networks_may_ignore_roles_they_do_not_need(spec):
    """A role binding is a subset: an encoder without conditioning, a denoiser without time_ctx."""
    data = json.loads(spec.to_json())
    for graph, role in (("encoder", "cond:class_id"), ("denoiser", "time_ctx")):
        data["model"][graph]["inputs"] = [i for i in data["model"][graph]["inputs"] if i["feeds"] != role]
    back, _ = Spec.from_dict(data, strict=True)
    assert [i.feeds for i in back.model.encoder.inputs] == ["sample", "time"]


@pytest.mark.parametrize("edit,message", [
    ({"null_kind": "none", "null_value": None},
     "guidance.scale is 2.0 but conditioning 'class_id' declares no null value for the unconditional branch"),
    ({"null_kind": "file", "null_value": None, "null_file": "/etc/passwd.npy"},
     "model.conditioning[class_id].null_file is '/etc/passwd.npy'; expected a relative .npy path inside the bundle"),
    ({"null_value": None}, "model.conditioning[class_id]: null_value is given exactly when null_kind is 'value'"),
    ({"dtype": "float32"}, "model.conditioning[class_id]: num_classes applies to integer class ids"),
    ({"shape": [0]}, "model.conditioning[class_id].shape is [0]; sizes must be positive"),
    ({"name": "class id"}, "model.conditioning[class id]: name 'class id' must start with a letter"),
])
def test_conditioning_declaration_errors_name_the_field(spec, edit, message):
    data = json.loads(spec.to_json())
    data["model"]["conditioning"][0].update(edit)
    with pytest.raises(SpecError) as info:
        Spec.from_dict(data)
    assert message in str(info.value), str(info.value)


def test_model_time_must_follow_the_declared_time_input(spec):
    data = json.loads(spec.to_json())
    data["sampler"]["tables"]["model_time"][5] += 0.25
    with pytest.raises(SpecError, match=r"sampler.tables.model_time\[5\] .* model.time_input logsnr"):
        Spec.from_dict(data)
    data = json.loads(spec.to_json())
    data["sampler"]["tables"]["model_time"] = data["sampler"]["tables"]["model_time"][:-1]
    with pytest.raises(SpecError, match=r"sampler.tables.model_time has 11 entries; expected 12"):
        Spec.from_dict(data)
