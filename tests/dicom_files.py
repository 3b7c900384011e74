"""The one DICOM writer of the tests: small uncompressed files made with pydicom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def write_dicom(
    path: Path,
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    frames: int = 1,
    sop_uid: str | None = None,
    **elements: object,
) -> Path:
    """Write an uncompressed DICOM; ``pixels`` is [frames?, rows, cols, samples?], or None for
    a file without pixel data. ``elements`` set further attributes (``PatientID=…``)."""
    uid = sop_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = uid
    if pixels is not None:
        samples = 3 if photometric == "RGB" else 1
        shape = pixels.shape[1:] if frames > 1 else pixels.shape
        ds.Rows, ds.Columns = shape[0], shape[1]
        ds.BitsAllocated = pixels.dtype.itemsize * 8
        ds.BitsStored = bits_stored or ds.BitsAllocated
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = int(np.issubdtype(pixels.dtype, np.signedinteger))
        ds.SamplesPerPixel = samples
        ds.PhotometricInterpretation = photometric
        if samples == 3:
            ds.PlanarConfiguration = 0
        if frames > 1:
            ds.NumberOfFrames = frames
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    for key, value in elements.items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_radiograph(
    path: Path, patient_id: str = "anon", size: int = 32, sop_uid: str | None = None
) -> Path:
    """A small 12-bit MONOCHROME2 CR image (a ramp), as the dataset layouts hold."""
    ramp = (np.arange(size * size, dtype=np.uint16) % 4096).reshape(size, size)
    return write_dicom(
        path, ramp, bits_stored=12, sop_uid=sop_uid, PatientID=patient_id, Modality="CR"
    )
