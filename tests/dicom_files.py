"""Writing small synthetic DICOM series (pydicom) for the volume tests: slice ``k`` holds the values
``100 k + 10 row + column`` (int16, rescale intercept -1024)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROWS, COLS = 6, 5
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def write_slice(path: Path, k: int, *, z: float, iop=AXIAL, spacing=(0.7, 0.8), series: str = "1.2.3.4",
                shape=(ROWS, COLS), xy=(-10.0, 20.0)) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    rows, cols = shape
    jj, ii = np.mgrid[0:rows, 0:cols]
    pixels = (100 * k + 10 * jj + ii).astype(np.int16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.Modality, ds.InstanceNumber = series, "CT", k + 1
    ds.ImagePositionPatient = [xy[0], xy[1], z]
    ds.ImageOrientationPatient = list(iop)
    ds.PixelSpacing = list(spacing)
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


def series(folder: Path, n: int = 4, dz: float = 2.5, names=None, **kw) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        name = names[k] if names else f"slice{k:03d}.dcm"
        write_slice(folder / name, k, z=-30.0 + k * dz, **kw)
    return folder
