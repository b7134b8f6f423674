"""The sample explorer on a volume campaign (a real round: NIfTI ingest, in-process training, Ray Data
scoring, selection): each case is a slice viewer, a slider over its axial slices with the masks' outlines and
the voxel uncertainty of the chosen slice; moving the slider shows another slice; the ledger is unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import APP, file_fingerprint
from streamlit.testing.v1 import AppTest
from volume_files import lidc_like  # tests/ is on sys.path

from medloop.config import parse_campaign
from medloop.data.ingest import ingest
from medloop.rounds.orchestrator import run_round

#: the selection and labeling sections both campaigns below share (every gate open, the oracle answers)
OPEN_GATES = """[selection]
budget = 3
tau_c = 0.5
tau_u = 0.5
max_ece = 1.0
min_val_dice = 0.0
mask_gate = 1.0
[labeling]
oracle = true
"""


def _after_one_round(root: Path, text: str) -> Path:
    """Write the campaign file, ingest its data and run one real round (torch on one thread); its path."""
    import tomllib

    config = root / "campaign.toml"
    config.write_text(text)
    campaign = parse_campaign(tomllib.loads(text))
    ingest(campaign, "generic")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run_round(campaign).status == "done"
    finally:
        torch.set_num_threads(threads)
    return config


@pytest.fixture(scope="module")
def volume_campaign(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("volume-dashboard")
    lidc_like(root / "data", n=16)
    text = f"""name = "voldash"
root = "{root / 'camp'}"
[data]
source = "generic"
path = "{root / 'data'}"
classes = ["benign", "malignant"]
volume_size = [8, 16, 16]
unlabeled_fraction = 0.7
[model]
width = 4
depth = 3
[uncertainty]
mc_passes = 3
[compute]
num_workers = 0
epochs = 2
batch_size = 4
score_batch_size = 8
""" + OPEN_GATES
    return _after_one_round(root, text)


def test_explorer_shows_volumes_as_a_slice_viewer(volume_campaign: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medloop.config import load_campaign

    ledger_file = Path(load_campaign(volume_campaign).ledger.removeprefix("sqlite:///"))
    before = file_fingerprint(ledger_file)
    monkeypatch.setenv("MEDLOOP_CONFIG", str(volume_campaign))
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.sidebar.radio(key="page").set_value("Sample explorer").run()
    assert not at.exception, [e.value for e in at.exception]
    sliders = [s for s in at.slider if str(s.key).startswith("slice-")]
    assert sliders, "no slice slider"
    first = sliders[0]
    assert (first.min, first.max) == (0, 5)  # the stored volume has 6 axial slices
    images = at.get("image")
    assert images and len(images[0].proto.imgs) == 2  # slice + outlines, voxel uncertainty
    caption = images[0].proto.imgs[0].caption
    assert caption.startswith(f"slice {first.value + 1} of 6")
    other = 0 if first.value != 0 else 5
    first.set_value(other).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.get("image")[0].proto.imgs[0].caption.startswith(f"slice {other + 1} of 6")
    assert file_fingerprint(ledger_file) == before  # the dashboard only reads


@pytest.fixture(scope="module")
def region_campaign(tmp_path_factory) -> Path:
    """A multi-region volume campaign (3D phantoms: oedema, core, enhancing) after one real round."""
    from medloop.data.phantoms3d import write_phantom_folder

    root = tmp_path_factory.mktemp("region-dashboard")
    write_phantom_folder(root / "data", n=16, size=16)
    text = f"""name = "regiondash"
root = "{root / 'camp'}"
[data]
source = "generic"
path = "{root / 'data'}"
classes = ["idh_mutant", "idh_wildtype"]
volume_size = [16, 16, 16]
regions = ["oedema", "core", "enhancing"]
unlabeled_fraction = 0.5
[model]
width = 8
depth = 2
[uncertainty]
mc_passes = 3
[compute]
num_workers = 0
epochs = 10
batch_size = 4
lr = 3e-3
score_batch_size = 8
""" + OPEN_GATES
    return _after_one_round(root, text)


def test_explorer_outlines_each_region_and_names_them(region_campaign: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDLOOP_CONFIG", str(region_campaign))
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.sidebar.radio(key="page").set_value("Sample explorer").run()
    assert not at.exception, [e.value for e in at.exception]
    captions = [img.caption for element in at.get("image") for img in element.proto.imgs]
    named = [c for c in captions if "regions (one outline each): " in c]
    assert named, captions  # the slice on which a case's masks have the most lesion voxels shows its regions
    for caption in named:
        listed = caption.split("regions (one outline each): ", 1)[1].split(", ")
        assert all(part.split(" ")[0] in ("oedema", "core", "enhancing") and part.endswith(" px") for part in listed)
