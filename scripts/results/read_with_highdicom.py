#!/usr/bin/env python3
"""Reads a DICOM SR (TID 1500) or SEG written by radserve with highdicom and prints what
highdicom understood, as one JSON object on stdout. The Rust tests in
server/src/results/validation_tests.rs compare it with what they gave the writers, so a
structure highdicom cannot follow fails the test.

    read_with_highdicom.py FILE

SR  → {"kind": "SR", "sop_class_uid", "patient_name", "groups": [...], "qualitative": [...]}
SEG → {"kind": "SEG", "number_of_frames", "segments": [...]}
Exit status 1 (and a message on stderr) when highdicom cannot read the file.
"""

import json
import sys

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.coding import Code

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
ALGORITHM_NAME = Code("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = Code("111003", "DCM", "Algorithm Version")
ALGORITHM_PARAMETERS = Code("111002", "DCM", "Algorithm Parameters")
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")


def code(concept):
    if concept is None:
        return None
    return {"scheme": concept.scheme_designator, "value": concept.value, "meaning": concept.meaning}


def texts(item, name):
    return [i.value for i in hd.sr.utils.find_content_items(item, name=name)]


def point(scoord):
    data = np.asarray(scoord.value, dtype=float).reshape(-1, 3)
    return {
        "graphic_type": str(scoord.graphic_type.value),
        "frame_of_reference_uid": str(scoord.frame_of_reference_uid),
        "center": [float(v) for v in data[0]],
    }


def read_group(group, template):
    item = group[0]
    measurements = []
    center = None
    for m in group.get_measurements():
        measurements.append({"concept": code(m.name), "value": float(m.value), "unit": code(m.unit)})
        for c in m.referenced_coordinates or []:
            center = point(c)
    out = {
        "template": template,
        "tracking_id": group.tracking_identifier,
        "tracking_uid": str(group.tracking_uid) if group.tracking_uid else None,
        "finding": code(group.finding_type),
        "finding_sites": [code(s.value) for s in group.finding_sites],
        "algorithm": {
            "name": texts(item, ALGORITHM_NAME),
            "version": texts(item, ALGORITHM_VERSION),
            "parameters": texts(item, ALGORITHM_PARAMETERS),
        },
        "measurements": measurements,
        "referenced_segment": None,
        "center": center,
        "source_images": [],
    }
    if template == "1411":
        segment = group.referenced_segment
        if segment is not None:
            image = segment[0]
            out["referenced_segment"] = {
                "sop_instance_uid": str(image.referenced_sop_instance_uid),
                "segment_numbers": [int(n) for n in image.referenced_segment_numbers or []],
                "source_images": [str(i.referenced_sop_instance_uid) for i in segment[1:]
                                  if i.value_type == hd.sr.ValueTypeValues.IMAGE],
            }
    elif template == "1410":
        roi = group.roi
        if roi is not None:
            out["center"] = point(roi)
    else:
        out["source_images"] = [str(i.referenced_sop_instance_uid) for i in group.source_images]
    return out


def read_sr(path):
    sr = hd.sr.srread(path)
    report = sr.content
    if not isinstance(report, hd.sr.MeasurementReport):
        raise ValueError(f"content is {type(report).__name__}, not a TID 1500 MeasurementReport")
    groups = []
    for group in report.get_volumetric_roi_measurement_groups():
        groups.append(read_group(group, "1411"))
    for group in report.get_planar_roi_measurement_groups():
        groups.append(read_group(group, "1410"))
    for group in report.get_image_measurement_groups():
        groups.append(read_group(group, "1501"))
    observers = report.get_observer_contexts()
    qualitative = []
    for container in hd.sr.utils.find_content_items(report[0], name=QUALITATIVE_EVALUATIONS):
        for evaluation in container.ContentSequence:
            qualitative.append({"name": code(evaluation.name), "value": code(evaluation.value)})
    return {
        "kind": "SR",
        "sop_class_uid": str(sr.SOPClassUID),
        "patient_name": str(sr.PatientName),
        "patient_id": str(sr.PatientID),
        "study_instance_uid": str(sr.StudyInstanceUID),
        "observer_types": [code(o.observer_type) for o in observers],
        "device_observer_names": [
            o.observer_identifying_attributes.name for o in observers
            if isinstance(o.observer_identifying_attributes, hd.sr.DeviceObserverIdentifyingAttributes)
        ],
        "evidence_sop_instance_uids": sorted(
            str(ref.ReferencedSOPInstanceUID)
            for study in sr.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence
            for ref in series.ReferencedSOPSequence
        ),
        "groups": groups,
        "qualitative": qualitative,
    }


def read_seg(path):
    seg = hd.seg.segread(path)
    source_uids = [uid for _, _, uid in seg.get_source_image_uids()]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=source_uids,
        segment_numbers=list(seg.segment_numbers),
        combine_segments=False,
        skip_overlap_checks=True,
    )  # (instances, rows, columns, segments)
    frames_per_segment = {}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        n = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        frames_per_segment[n] = frames_per_segment.get(n, 0) + 1
    segments = []
    for i, number in enumerate(seg.segment_numbers):
        description = seg.get_segment_description(number)
        per_source = pixels[..., i].reshape(len(source_uids), -1).sum(axis=1)
        segments.append({
            "number": int(number),
            "label": description.segment_label,
            "tracking_id": description.tracking_id,
            "tracking_uid": str(description.tracking_uid) if description.tracking_uid else None,
            "property_category": code(description.segmented_property_category),
            "property_type": code(description.segmented_property_type),
            "algorithm_type": str(description.algorithm_type.value),
            "frames": frames_per_segment.get(int(number), 0),
            "pixel_count": int(per_source.sum()),
            "pixel_count_by_source": {
                uid: int(count) for uid, count in zip(source_uids, per_source) if count
            },
        })
    return {
        "kind": "SEG",
        "sop_class_uid": str(seg.SOPClassUID),
        "patient_name": str(seg.PatientName),
        "number_of_frames": int(seg.NumberOfFrames),
        "rows": int(seg.Rows),
        "columns": int(seg.Columns),
        "segments": segments,
    }


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    path = argv[1]
    try:
        sop_class = pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID
        summary = read_seg(path) if sop_class == SEG_STORAGE else read_sr(path)
    except Exception as error:  # report any failure to read as the test's failure
        print(f"highdicom could not read {path}: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    json.dump(summary, sys.stdout, ensure_ascii=False)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
