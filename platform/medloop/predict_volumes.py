"""``medloop predict`` with a volume model: NIfTI files and DICOM series in; masks, a CSV and overlays out.

Each case is read as volume ingest reads it (:mod:`medloop.data.volume_dataset`: canonical RAS+, the
campaign's ``data.sequences`` stacked, resampled to ``data.spacing`` when set), normalised as ingest
normalises it (:func:`medloop.data.volume_ingest.prepare_volume`: CT window or MRI z-score), predicted
on the model's grid and brought back to its own grid (:func:`medloop.trainers.inference.predict_volume`).
Output folder (written to a temporary sibling, then renamed, as for images):

* ``masks/<name>.nii.gz``: the lesion mask (uint8 0 / 1) on the input's own voxel grid, in the input
  file's orientation and with its affine (a DICOM series: canonical RAS+ with the series' affine);
* ``predictions.csv``: one row per volume (:data:`CSV_COLUMNS`, ``p_<class>`` for each class), with the
  lesion's voxel count and volume in mm^3;
* ``overlays/<name>.png`` with ``--overlays``: the most informative axial slice (the one Label Studio
  would show) with the mask outline | its voxel uncertainty;
* ``unreadable.csv`` and ``run.json`` as for images.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medloop.config import Campaign
from medloop.data.errors import BadFile, FileError
from medloop.data.volumes import NIFTI_SUFFIXES, Volume, is_nifti, resample
from medloop.trainers.inference import MEASURES, InferenceModel, Settings, VolumePrediction

CSV_COLUMNS = ("file", "name", "mask", "shape", "spacing_mm", "class", "<p_class>", *MEASURES, "lesion_voxels",
               "lesion_volume_mm3", "overlay_slice", "notes")


@dataclass(frozen=True)
class VolumeInput:
    """A case to predict: its output name, its source (a NIfTI file, a DICOM series folder, or
    ``{sequence: file}``) and the path its rows name."""

    name: str
    source: Path | dict[str, Path]

    @property
    def path(self) -> Path:
        return next(iter(self.source.values())) if isinstance(self.source, dict) else self.source


@dataclass
class ReadVolume:
    """A case read for the model: the canonical volume (its own grid), the model's (C, D, H, W) input and
    the input file's affine (None for a DICOM series)."""

    case: VolumeInput
    canonical: Volume
    array: np.ndarray
    original_affine: np.ndarray | None
    notes: list[str]

    @property
    def grid(self) -> tuple[int, int, int]:
        """The input's own grid in model axes (D, H, W) = canonical (Z, Y, X)."""
        x, y, z = self.canonical.shape3d
        return (z, y, x)

    def on_own_grid(self) -> np.ndarray:
        """The model's input on the input's own grid (differs when ``data.spacing`` resampled it)."""
        from medloop.trainers.dataset import resize_volume

        return resize_volume(self.array, self.grid)


# ---- listing and reading -----------------------------------------------------------------------------


def _is_case_folder(folder: Path) -> bool:
    """A folder of cases (NIfTI files or series sub-folders) rather than one DICOM series."""
    return any(e.is_dir() or is_nifti(e) for e in folder.iterdir() if not e.name.startswith("."))


def list_volume_inputs(paths: Sequence[str | Path], sequences: Sequence[str] | None
                       ) -> tuple[list[VolumeInput], list[BadFile]]:
    """The cases under ``paths``: a NIfTI file; a DICOM series folder; or a folder of NIfTI files and series
    sub-folders (a generic-layout root: its ``images/``), single-sequence files grouped per case when
    ``sequences`` is given. Other files in a folder are left out; a path that is neither is a bad input."""
    from medloop.data.volume_dataset import case_sources, nifti_stem

    cases: dict[str, VolumeInput] = {}
    bad: list[BadFile] = []
    loose: list[Path] = []

    def add(case: VolumeInput) -> None:
        other = cases.get(case.name)
        if other is None:
            cases[case.name] = case
        elif other.source != case.source:  # the same name twice: its outputs would overwrite each other
            bad.append(BadFile(str(case.path), f"another input is also named {case.name!r} ({other.path}); "
                                               "predict them in separate runs"))

    for raw in paths:
        p = Path(raw)
        if p.is_file():
            if is_nifti(p):
                loose.append(p)
            else:
                bad.append(BadFile(str(p), f"not a volume file (expected {', '.join(NIFTI_SUFFIXES)} or a DICOM "
                                           "series folder)"))
        elif p.is_dir():
            folder = p / "images" if (p / "images").is_dir() else p
            if not _is_case_folder(folder):
                add(VolumeInput(folder.name, folder))
                continue
            for name, source in case_sources(folder, sequences).items():
                if isinstance(source, Path) and source.is_file() and not is_nifti(source):
                    continue
                add(VolumeInput(name, source))
        else:
            bad.append(BadFile(str(p), "no such file or folder"))
    if loose:  # files named one by one: grouped per case like a folder's
        by_seq: dict[str, dict[str, Path]] = {}
        for f in loose:
            stem = nifti_stem(f.name)
            case, _, seq = stem.rpartition("_")
            if sequences and case and seq in sequences:
                by_seq.setdefault(case, {})[seq] = f
            else:
                add(VolumeInput(stem, f))
        for case, files in by_seq.items():
            add(VolumeInput(case, files))
    return list(cases.values()), bad


def model_input(canonical: Volume, campaign: Campaign, channels: int) -> tuple[np.ndarray, list[str]]:
    """A canonical volume as the model takes it, (C, D, H, W), as ingest stores it (resampled to
    ``data.spacing`` when set, normalised by :func:`medloop.data.volume_ingest.prepare_volume`), and notes;
    a :class:`FileError` naming the file when it does not have the model's ``channels`` sequences."""
    from medloop.data.volume_ingest import prepare_volume

    d = campaign.data
    n = 1 if canonical.array.ndim == 3 else int(canonical.array.shape[-1])
    if n != channels:
        want = f" (data.sequences = {list(d.sequences)})" if d.sequences else ""
        raise FileError(canonical.path, f"has {n} sequence(s); the model takes {channels}{want}")
    model_grid = canonical if d.spacing is None else resample(canonical, d.spacing)
    try:
        array, _ = prepare_volume(model_grid.array, d.intensity, (float(d.ct_window[0]), float(d.ct_window[1])))
    except ValueError as err:
        raise FileError(canonical.path, f"intensity normalisation failed: {err}") from None
    notes = [f"{canonical.path}: resampled to {list(d.spacing)} mm for the model"] if d.spacing is not None else []
    return array, notes


def read_volume_input(case: VolumeInput, campaign: Campaign, channels: int) -> ReadVolume:
    """Read and normalise one case for a model of ``channels`` inputs; a :class:`FileError` naming the file
    when it cannot be read or does not have the model's sequences."""
    import nibabel as nib

    from medloop.data.volume_dataset import read_case_image

    canonical = read_case_image(case.source, campaign.data.sequences)
    array, notes = model_input(canonical, campaign, channels)
    original = None
    if isinstance(case.source, dict) or case.source.is_file():
        header = nib.load(str(case.path))  # the input's own orientation, for writing its mask back
        if isinstance(header, nib.Nifti1Image | nib.Nifti2Image):
            original = np.asarray(header.affine, np.float64)
    return ReadVolume(case=case, canonical=canonical, array=array, original_affine=original, notes=notes)


# ---- on the input's grid ------------------------------------------------------------------------------


def canonical_mask(mask_dhw: np.ndarray) -> np.ndarray:
    """A mask in model axes (D, H, W) = (Z, Y, X) back to canonical (X, Y, Z): the inverse of
    :func:`medloop.data.volume_ingest.model_axes`."""
    return np.ascontiguousarray(np.asarray(mask_dhw).transpose(2, 1, 0))


def mask_image(mask_dhw: np.ndarray, canonical_affine: np.ndarray, original_affine: np.ndarray | None) -> Any:
    """The NIfTI image of a predicted mask: canonical voxel order and affine, reoriented to the input file's
    orientation when it is known (nibabel's ``as_reoriented``), so that it lies on the input's own grid."""
    import nibabel as nib
    from nibabel.orientations import io_orientation, ornt_transform

    img = nib.Nifti1Image(canonical_mask(mask_dhw).astype(np.uint8), canonical_affine)
    if original_affine is not None:
        img = img.as_reoriented(ornt_transform(io_orientation(canonical_affine), io_orientation(original_affine)))
    img.set_data_dtype(np.uint8)
    return img


def overlay_slice(pred: VolumePrediction, band: int) -> int:
    """The axial slice an overlay shows: the most informative one (what Label Studio would get)."""
    from medloop.labeling.volume_slices import most_informative_slice

    return most_informative_slice(pred.uncertainty, pred.mask, pred.fg_prob, band)


def _cell(v: float) -> str:
    return "" if v is None or not math.isfinite(v) else f"{v:.6g}"


def csv_header(classes: Sequence[str]) -> list[str]:
    i = CSV_COLUMNS.index("<p_class>")
    return [*CSV_COLUMNS[:i], *(f"p_{c}" for c in classes), *CSV_COLUMNS[i + 1:]]


def csv_row(read: ReadVolume, pred: VolumePrediction, classes: Sequence[str], slice_index: int | None) -> list[str]:
    vol = read.canonical
    voxel_mm3 = float(np.prod(vol.spacing))
    return [str(read.case.path), read.case.name, f"masks/{read.case.name}.nii.gz", "x".join(map(str, vol.shape3d)),
            "x".join(f"{s:g}" for s in vol.spacing), classes[pred.pred_class],
            *(_cell(float(p)) for p in pred.probs), *(_cell(pred.measures[m]) for m in MEASURES),
            str(pred.lesion_voxels), _cell(pred.lesion_voxels * voxel_mm3),
            "" if slice_index is None else str(slice_index), " | ".join(read.notes)]


# ---- the run --------------------------------------------------------------------------------------------


def predict_volume_files(
    im: InferenceModel,
    campaign: Campaign,
    cases: Sequence[VolumeInput],
    settings: Settings,
    out: Path,
    *,
    overlays: bool = False,
    progress: Any = None,
) -> tuple[int, list[BadFile], list[str]]:
    """Predict ``cases`` one at a time into ``out`` (masks, overlays, predictions.csv); returns (predicted,
    unreadable, notes)."""
    import nibabel as nib

    from medloop.labeling.volume_slices import slice_image
    from medloop.predict import overlay, png_bytes
    from medloop.trainers.inference import predict_volume

    predicted, unreadable, notes = 0, [], []
    task = progress.add_task("predicting volumes", total=len(cases)) if progress is not None else None
    (out / "masks").mkdir(parents=True, exist_ok=True)
    with (out / "predictions.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(csv_header(im.classes))
        for case in cases:
            try:
                read = read_volume_input(case, campaign, im.channels)
            except FileError as err:
                unreadable.append(err.as_bad())
            except (OSError, ValueError, MemoryError) as err:
                unreadable.append(BadFile(str(case.path), f"unreadable ({type(err).__name__}: {err})"))
            else:
                pred = predict_volume(im, read.array, settings, read.grid)  # maps on the input's own grid
                nib.save(mask_image(pred.mask, read.canonical.affine, read.original_affine),
                         str(out / "masks" / f"{case.name}.nii.gz"))
                k = None
                if overlays:
                    k = overlay_slice(pred, settings.boundary_band)
                    picture = overlay(slice_image(read.on_own_grid(), k), pred.mask[k], pred.uncertainty[k])
                    (out / "overlays").mkdir(exist_ok=True)
                    (out / "overlays" / f"{case.name}.png").write_bytes(png_bytes(picture))
                writer.writerow(csv_row(read, pred, im.classes, k))
                notes += read.notes
                predicted += 1
            if progress is not None:
                progress.advance(task, 1)
    return predicted, unreadable, notes
