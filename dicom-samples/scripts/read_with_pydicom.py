#!/usr/bin/env python3
"""Reads DICOM files with pydicom (an independent implementation) and prints one JSON object
per file: what it decoded, so Rust tests can compare it with what the generator meant to write.

usage: read_with_pydicom.py FILE...
"""
import hashlib
import json
import sys

import pydicom


def describe(path):
    ds = pydicom.dcmread(path)
    out = {
        "path": path,
        "transfer_syntax": str(ds.file_meta.TransferSyntaxUID),
        "specific_character_set": ds.get("SpecificCharacterSet"),
        "patient_name": str(ds.PatientName),
        "patient_id": ds.PatientID,
        "study_instance_uid": ds.StudyInstanceUID,
        "sop_class_uid": ds.SOPClassUID,
        "rows": ds.Rows,
        "columns": ds.Columns,
    }
    # Raw pixel bytes are always readable; decoding compressed data would need plugins.
    if "PixelData" in ds and not ds.file_meta.TransferSyntaxUID.is_compressed:
        out["pixel_data_sha256"] = hashlib.sha256(ds.PixelData).hexdigest()
    return out


def main():
    failures = 0
    for path in sys.argv[1:]:
        try:
            print(json.dumps(describe(path), ensure_ascii=False))
        except Exception as error:  # report every unreadable file, keep going
            failures += 1
            print(json.dumps({"path": path, "error": repr(error)}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
