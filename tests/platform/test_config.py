"""Campaign validation: unknown keys and wrong types are named; defaults need no file."""

from __future__ import annotations

from pathlib import Path

import pytest

from medloop.config import Campaign, ConfigError, commented_toml, load_campaign


def test_defaults_need_no_file() -> None:
    c = load_campaign(None)
    assert c == Campaign()
    assert c.data.source == "synthetic" and c.data.classes == ["normal", "benign", "malignant"]
    assert c.folder == Path(".medloop") / "demo"


def test_unknown_key_is_named(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[data]\nimage_sise = 32\n")
    with pytest.raises(ConfigError) as exc:
        load_campaign(f)
    assert "data.image_sise: unknown key" in str(exc.value)
    assert str(f) in str(exc.value)


def test_wrong_type_names_key_and_expected_type(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[compute]\nepochs = "many"\n[selection]\ntau_c = "high"\n')
    with pytest.raises(ConfigError) as exc:
        load_campaign(f)
    msg = str(exc.value)
    assert "compute.epochs" in msg and "integer" in msg and "'many'" in msg
    assert "selection.tau_c" in msg and "number" in msg


def test_split_fractions_checked(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[data]\nsplit = [0.5, 0.5, 0.5]\n")
    with pytest.raises(ConfigError, match="data.split"):
        load_campaign(f)


def test_init_output_parses_back_to_defaults(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    text = commented_toml()
    assert "# fraction of the train split moved to the unlabeled pool" in text
    f.write_text(text)
    assert load_campaign(f).model_dump() == Campaign().model_dump()  # the values (the file adds its folder)


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_campaign(tmp_path / "nope.toml")
    f = tmp_path / "c.toml"
    f.write_text("[data\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_campaign(f)


def test_configuration_doc_lists_every_key() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    missing = []
    for key, field in Campaign.model_fields.items():
        section = getattr(field.annotation, "model_fields", None)
        if section is None:
            missing += [] if f"`{key}`" in doc else [key]
        else:
            missing += [f"{key}.{sub}" for sub in section if f"`{sub}`" not in doc.split(f"`[{key}]`", 1)[-1]]
    assert missing == [], f"docs/configuration.md does not describe: {missing}"


def test_unknown_policy_or_acquisition_is_named(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[selection]\npolicy = "upss"\nacquisition = "coreset"\n')
    with pytest.raises(ConfigError) as exc:
        load_campaign(f)
    msg = str(exc.value)
    assert "selection.policy" in msg and "'upss'" in msg and "cpl, none, pl, ups" in msg
    assert "selection.acquisition" in msg and "'coreset'" in msg and "bald" in msg


def test_model_heads_and_depth_default_to_the_models_own() -> None:
    from medloop.config import model_heads

    m = Campaign().model
    assert (m.cls_head, m.seg_head, m.depth) == (None, None, None)
    assert model_heads(m) == ("softmax", "softmax")
    assert model_heads(Campaign.model_validate({"model": {"name": "uml"}}).model) == ("evidential", "evidential")
    assert model_heads(Campaign.model_validate({"model": {"name": "uml", "seg_head": "softmax"}}).model) == (
        "evidential", "softmax")
    with pytest.raises(ConfigError, match="model.depth"):
        load_campaign(None, model={"depth": 9})


def test_default_acquisition_uses_both_tasks() -> None:
    c = Campaign()
    assert c.selection.acquisition == "hybrid"
    assert (c.selection.measure, c.uncertainty.method) == ("std", "mc_dropout")  # the default pair stays valid


def _load(tmp_path: Path, text: str) -> Campaign:
    f = tmp_path / "c.toml"
    f.write_text(text)
    return load_campaign(f)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[uncertainty]\nmethod = "evidential"\n',  # default measure std
         'selection.measure = "std" needs MC-dropout passes, but uncertainty.method = "evidential" gives none; '
         'use entropy, or uncertainty.method = "mc_dropout" | "both"'),
        ('[uncertainty]\nmethod = "evidential"\n[selection]\nmeasure = "mutual_info"\n',
         'selection.measure = "mutual_info" needs MC-dropout passes'),
        ('[uncertainty]\nmethod = "evidential"\n[selection]\nmeasure = "entropy"\nacquisition = "bald"\n',
         'selection.acquisition = "bald" needs MC-dropout passes, but uncertainty.method = "evidential" gives none'),
        ('[model]\nname = "uml"\n[uncertainty]\nmethod = "evidential"\n',  # uml: vacuity is suggested
         'selection.measure = "std" needs MC-dropout passes, but uncertainty.method = "evidential" gives none; '
         'use entropy or vacuity, or uncertainty.method = "mc_dropout" | "both"'),
        ('[selection]\nmeasure = "vacuity"\n',
         'selection.measure = "vacuity" needs an evidential classification head, but model "mtunet" has a '
         'softmax classification head (model.cls_head unset)'),
        ('[selection]\nacquisition = "vacuity"\n',
         'selection.acquisition = "vacuity" needs an evidential classification head'),
        ('[model]\nname = "uml"\ncls_head = "softmax"\n[selection]\nmeasure = "vacuity"\n',
         'selection.measure = "vacuity" needs an evidential classification head, but model.cls_head = "softmax"'),
    ],
)
def test_measures_that_the_method_or_head_cannot_give_are_refused(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, text)
    msg = str(exc.value)
    assert str(tmp_path / "c.toml") in msg and expected in msg
    assert "(got" not in msg  # the cross-check names the keys, not the whole campaign


def test_both_problems_are_named_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, '[uncertainty]\nmethod = "evidential"\n[selection]\nmeasure = "std"\nacquisition = "bald"\n')
    assert 'selection.measure = "std"' in str(exc.value) and 'selection.acquisition = "bald"' in str(exc.value)


@pytest.mark.parametrize(
    "text",
    [
        '[model]\nname = "uml"\n[selection]\nmeasure = "vacuity"\nacquisition = "vacuity"\n',  # uml is evidential
        '[model]\nname = "uml"\n[uncertainty]\nmethod = "evidential"\n[selection]\nmeasure = "vacuity"\n',
        '[model]\ncls_head = "evidential"\n[uncertainty]\nmethod = "both"\n'
        '[selection]\nmeasure = "mutual_info"\nacquisition = "vacuity"\n',
        '[uncertainty]\nmethod = "evidential"\n[selection]\nmeasure = "entropy"\nacquisition = "hybrid"\n',
        '[selection]\nmeasure = "mutual_info"\nacquisition = "bald"\n',
    ],
)
def test_measures_that_exist_are_accepted(tmp_path: Path, text: str) -> None:
    _load(tmp_path, text)


def test_no_lesion_class_defaults_to_normal_only_where_it_exists():
    from medloop.config import ConfigError, parse_campaign

    assert parse_campaign({}).data.no_lesion_class == "normal"
    two = parse_campaign({"data": {"source": "generic", "classes": ["benign", "malignant"], "class_mix": [0.5, 0.5]}})
    assert two.data.no_lesion_class is None
    with pytest.raises(ConfigError, match="no_lesion_class"):
        parse_campaign({"data": {"no_lesion_class": "healthy"}})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[labeling]\nslice_sequence = 0\n", "labeling.slice_sequence = 0: expected a sequence number from 1"),
        ('[labeling]\nslice_sequence = "flair"\n',
         "labeling.slice_sequence = 'flair': not a name in data.sequences (None)"),
        ('[data]\nsequences = ["t1", "t2"]\n[labeling]\nslice_sequence = "flair"\n',
         "labeling.slice_sequence = 'flair': not a name in data.sequences (['t1', 't2'])"),
    ],
)
def test_a_slice_sequence_that_names_no_sequence_is_refused(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, text)
    assert expected in str(exc.value)


def test_the_slice_sequence_resolves_by_number_or_name(tmp_path: Path) -> None:
    from medloop.config import slice_sequence_index

    named = _load(tmp_path, '[data]\nsequences = ["t1", "t1ce", "t2", "flair"]\n[labeling]\nslice_sequence = "flair"\n')
    assert slice_sequence_index(named, 4, "case-1") == 3
    assert slice_sequence_index(_load(tmp_path, "[labeling]\nslice_sequence = 2\n"), 4, "case-1") == 1
    assert slice_sequence_index(Campaign(), 1, "case-1") == 0  # the default: the first
    with pytest.raises(ValueError, match=r"labeling.slice_sequence = 'flair': case case-7 has 2 sequence\(s\)"):
        slice_sequence_index(named, 2, "case-7")
