"""`medloop ingest generic` on a folder of volumes: detected from the files, normalised, laid out as
(C, D, H, W), stored with its spacing; bad files named and nothing written without --skip-bad; patients
kept in one split; 2D images and volumes never mixed in one campaign."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sqlalchemy import select
from typer.testing import CliRunner
from volume_files import ct_case, lidc_like, save  # tests/ is on sys.path

from medloop.cli import app
from medloop.config import load_campaign
from medloop.data.errors import DataError, IngestError
from medloop.data.generic import is_volume_folder
from medloop.data.imagestore import ImageStore
from medloop.data.ingest import ingest
from medloop.data.volume_ingest import intensity_kind, model_axes, patient_of
from medloop.data.volumes import ct_window
from medloop.ledger import Label, Ledger, Sample

from .conftest import make_campaign

LIDC = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "lidc_nodules"
runner = CliRunner()


def test_model_axes_puts_sequences_then_slices_rows_columns() -> None:
    a = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)  # (X, Y, Z, S)
    out = model_axes(a)
    assert out.shape == (5, 4, 3, 2)
    for x, y, z, s in [(0, 0, 0, 0), (1, 2, 3, 4), (1, 0, 2, 3)]:
        assert out[s, z, y, x] == a[x, y, z, s]
    assert model_axes(a[..., 0]).shape == (1, 4, 3, 2)


@settings(max_examples=30, deadline=None)
@given(arrays(np.float32, (4, 4, 3), elements=st.floats(-1200, 3000, width=32)))
def test_auto_intensity_is_ct_exactly_when_a_voxel_is_air(volume: np.ndarray) -> None:
    expected = "ct" if volume.min() < -500 else "mri"
    assert intensity_kind(volume, "auto") == expected
    assert intensity_kind(volume, "none") == "none"


def test_patient_of() -> None:
    assert patient_of("LIDC-IDRI-0003_R_2", r"^(.+)_R_\d+$") == "LIDC-IDRI-0003"
    assert patient_of("other", r"^(.+)_R_\d+$") is None and patient_of("x_R_1", None) is None


def test_cli_ingests_a_nifti_folder_with_only_source_path_and_classes(tmp_path: Path) -> None:
    data = tmp_path / "nodules"
    cases = lidc_like(data)
    assert is_volume_folder(data)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'name = "v"\nroot = "{tmp_path / "camp"}"\n[data]\nsource = "generic"\npath = "{data}"\n'
                   'classes = ["benign", "malignant"]\n')
    result = runner.invoke(app, ["ingest", "generic", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "8 volume(s) found, 8 added" in result.output
    assert "volumes: 8 CT window L -600 W 1500 -> [0, 1]" in result.output
    campaign = load_campaign(cfg)
    store = ImageStore(campaign.store)
    ledger = Ledger.open(campaign.ledger)
    with ledger.reading() as s:
        rows = s.execute(select(Sample, Label).join(Label, Label.sample_id == Sample.id)
                         .where(Label.kind == "truth")).all()
    ledger.close()
    assert len(rows) == 8
    for sample, label in rows:
        name = Path(sample.original_path).name.removesuffix(".nii.gz")
        hu, mask = cases[name]
        assert (sample.channels, sample.depth, sample.height, sample.width) == (1, 6, 12, 10)
        assert sample.spacing == pytest.approx([1.25, 0.8, 0.7])  # (slice, row, column) mm
        stored = store.load_volume(sample.image_path)
        np.testing.assert_allclose(stored, model_axes(ct_window(hu)), atol=1e-6)
        assert np.array_equal(store.load_label_map(label.mask_path), model_axes(mask)[0])
        assert label.class_name in ("benign", "malignant")
    again = runner.invoke(app, ["ingest", "generic", "--config", str(cfg)])
    assert again.exit_code == 0 and "8 volume(s) found, 0 added, 8 already present" in again.output


def test_a_bad_volume_is_named_and_nothing_is_written_without_skip_bad(tmp_path: Path) -> None:
    data = tmp_path / "nodules"
    lidc_like(data, n=4)
    raw = (data / "images" / "P0_R_1.nii.gz").read_bytes()
    (data / "images" / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    save(data / "images" / "flat.nii.gz", np.zeros((8, 8), np.int16))
    save(data / "images" / "P9_R_1.nii.gz", ct_case(9)[0])
    save(data / "masks" / "P9_R_1.nii.gz", np.zeros((10, 12, 5), np.uint8))  # another grid
    campaign = make_campaign(tmp_path / "camp", source="generic", classes=["benign", "malignant"])
    with pytest.raises(IngestError) as exc:
        ingest(campaign, "generic", data)
    said = str(exc.value)
    assert "3 bad file(s); nothing was written" in said
    assert "cut.nii.gz: truncated or corrupt compressed NIfTI" in said or "cut.nii.gz: unreadable NIfTI" in said
    assert "flat.nii.gz: expected a 3D volume" in said and "P9_R_1.nii.gz: mask shape" in said
    assert not Path(campaign.store).exists() or not any(Path(campaign.store).rglob("*.npy"))
    report = ingest(campaign, "generic", data, skip_bad=True)
    assert (report.found, report.added, len(report.bad)) == (7, 4, 3)


def test_patients_stay_in_one_split_and_a_new_nodule_joins_its_patient(tmp_path: Path) -> None:
    data = tmp_path / "nodules"
    lidc_like(data, n=16)
    campaign = make_campaign(tmp_path / "camp", source="generic", classes=["benign", "malignant"],
                             group_pattern=r"^(.+)_R_\d+$", unlabeled_fraction=0.0, split=[0.5, 0.25, 0.25])
    report = ingest(campaign, "generic", data)
    assert (report.added, report.patient_groups, report.patient_cases) == (16, 8, 16)
    assert "patients with several cases: 8 (16 cases), each patient inside one split" in report.summary()

    def splits() -> dict[str, set[str]]:
        ledger = Ledger.open(campaign.ledger)
        with ledger.reading() as s:
            rows = s.execute(select(Sample.original_path, Sample.split)).all()
        ledger.close()
        out: dict[str, set[str]] = {}
        for path, split in rows:
            out.setdefault(Path(path).name.split("_R_")[0], set()).add(split)
        return out

    before = splits()
    assert all(len(v) == 1 for v in before.values()) and len({next(iter(v)) for v in before.values()}) >= 2
    hu, mask = ct_case(99)
    save(data / "images" / "P5_R_3.nii.gz", hu.astype(np.int16))
    with (data / "labels.csv").open("a") as fh:
        fh.write("P5_R_3.nii.gz,benign\n")
    assert ingest(campaign, "generic", data).added == 1
    assert splits()["P5"] == before["P5"]


def test_images_and_volumes_are_never_mixed_in_one_campaign(tmp_path: Path) -> None:
    data = tmp_path / "nodules"
    lidc_like(data, n=2)
    campaign = make_campaign(tmp_path / "camp", n_samples=6, classes=["benign", "malignant"],
                             class_mix=[0.5, 0.5])
    ingest(campaign, "synthetic")
    with pytest.raises(DataError, match="already holds 2D images; volumes need a campaign of their own"):
        ingest(campaign, "generic", data)
    other = make_campaign(tmp_path / "camp2", n_samples=6, classes=["benign", "malignant"], class_mix=[0.5, 0.5])
    ingest(other, "generic", data)
    with pytest.raises(DataError, match="already holds volumes; 2D images need a campaign of their own"):
        ingest(other, "synthetic")


def test_version_2_ledger_gets_the_volume_columns(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    Ledger.open(f"sqlite:///{db}").close()
    con = sqlite3.connect(db)
    con.execute("ALTER TABLE samples DROP COLUMN depth")
    con.execute("ALTER TABLE samples DROP COLUMN spacing")
    con.execute("ALTER TABLE annotation_tasks DROP COLUMN slice_index")
    con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    ledger = Ledger.open(f"sqlite:///{db}")
    assert ledger.get_meta("schema_version") == "3"
    ledger.close()
    cols = {r[1] for r in sqlite3.connect(db).execute("PRAGMA table_info(samples)")}
    assert {"depth", "spacing"} <= cols
    task_cols = {r[1] for r in sqlite3.connect(db).execute("PRAGMA table_info(annotation_tasks)")}
    assert "slice_index" in task_cols


@pytest.mark.skipif(not (LIDC / "labels.csv").is_file(), reason=f"no LIDC data at {LIDC}")
def test_lidc_nodules_ingest_with_patients_kept_together(tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path / "camp", source="generic", classes=["benign", "malignant"],
                             group_pattern=r"^(.+)_R_\d+$")
    report = ingest(campaign, "generic", LIDC)
    assert (report.found, report.added, len(report.bad)) == (804, 804, 0)
    assert report.classes == {"benign": 532, "malignant": 272}
    ledger = Ledger.open(campaign.ledger)
    with ledger.reading() as s:
        rows = s.execute(select(Sample.original_path, Sample.split, Sample.spacing, Sample.depth)).all()
    ledger.close()
    by_patient: dict[str, set[str]] = {}
    for path, split, _, _ in rows:
        by_patient.setdefault(Path(path).name.split("_R_")[0], set()).add(split)
    assert len(by_patient) == 441 and all(len(v) == 1 for v in by_patient.values())
    one = next(r for r in rows if Path(r.original_path).name == "LIDC-IDRI-0001_R_1.nii.gz")
    header = nib.load(str(LIDC / "images" / "LIDC-IDRI-0001_R_1.nii.gz")).header.get_zooms()
    assert one.spacing == pytest.approx([header[2], header[1], header[0]], abs=1e-4)
