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
    assert load_campaign(f) == Campaign()


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
