import pytest

from sami_core.errors import SpecError
from sami_core.spec import load_spec, resolve_shipped, spec_fingerprint, validate_spec


def test_defaults_validate():
    g = validate_spec("generate", {})
    assert g.n_constitutions == 2 and g.model.path == "demo"
    t = validate_spec("train", {"data": {"path": "runs/gen"}})
    # the paper's defaults
    assert (t.training.optimizer, t.training.lr, t.training.grad_accum, t.training.save_every) == ("rmsprop", 5e-7, 16, 32)


@pytest.mark.parametrize(
    "kind, data, expected",
    [
        ("generate", {"n_constitutions": 1}, "n_constitutions: must be >= 2"),
        ("generate", {"modle": {}}, "modle: unknown key"),
        ("generate", {"generation": {"temprature": 1}}, "generation.temprature: unknown key"),
        ("generate", {"generation": {"max_new_tokens": "many"}}, "generation.max_new_tokens: Input should be a valid integer"),
        ("train", {"data": {"path": "x"}, "training": {"lr": 0}}, "training.lr: must be > 0"),
        ("train", {"data": {"path": "x"}, "training": {"lr": -1e-5}}, "training.lr: must be > 0"),
        ("train", {}, "data: required key is missing"),
        ("sample", {"temperatures": []}, "temperatures: give at least one temperature"),
        ("generate", {"constitution": {"principles": []}}, "constitution: Value error"),
        ("generate", {"data": {"source": "hf"}}, "needs `dataset`"),
    ],
)
def test_bad_specs_name_the_field(kind, data, expected):
    with pytest.raises(SpecError) as err:
        validate_spec(kind, data)
    assert expected.split(":")[0] in str(err.value)
    assert expected.split(": ", 1)[-1].replace("Value error", "") in str(err.value)


def test_unknown_stage_and_non_mapping():
    with pytest.raises(SpecError, match="unknown stage"):
        validate_spec("fly", {})
    with pytest.raises(SpecError, match="mapping"):
        validate_spec("generate", [1, 2])


def test_spec_files(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("n_constitutions: 3\ngeneration:\n  temperature: 0.7\n")
    s = load_spec("generate", p)
    assert s.n_constitutions == 3 and s.generation.temperature == 0.7
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec("generate", tmp_path / "bad.yaml")
    with pytest.raises(SpecError, match="does not exist"):
        load_spec("generate", tmp_path / "nope.yaml")


def test_fingerprint_stable_and_sensitive():
    a = validate_spec("generate", {})
    b = validate_spec("generate", {"n_constitutions": 2})  # same after defaults
    c = validate_spec("generate", {"n_constitutions": 3})
    assert spec_fingerprint(a) == spec_fingerprint(b) != spec_fingerprint(c)


def test_shipped_shorthand():
    assert resolve_shipped("demo:opus/0").endswith("constitutions/opus/0.json")
    assert resolve_shipped("my/file.json") == "my/file.json"
    with pytest.raises(SpecError, match="shipped ones: demo:mistral/0"):
        resolve_shipped("demo:nope/9")
