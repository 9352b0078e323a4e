#!/usr/bin/env python3
"""Extracts from HL7's FHIR R4 (4.0.1) JSON Schema the subset radserve's FHIR output needs.

Usage:
    extract_schema_subset.py FULL_SCHEMA OUT_SUBSET

FULL_SCHEMA is HL7's combined `fhir.schema.json` for FHIR R4 4.0.1, as published at
https://hl7.org/fhir/R4/fhir.schema.json.zip. The copy this subset was made from is the one
committed in the public repository phtal-org/fhir-schema-json, commit
e6e02fa025efa7097fe11977202310b0eade7d0a (2021-07-24), which its CI downloaded from
https://www.hl7.org/fhir/fhir.schema.json.zip when R4 4.0.1 was the current release
(`"id": "http://hl7.org/fhir/json-schema/4.0"`; ImplementationGuide.fhirVersion lists
4.0.1) and then changed with its `patch.json`: `additionalProperties` set to true on
Patient, Appointment and Encounter. This script undoes that patch, so the definitions it
writes are HL7's own.

Why a subset: the full file is 2.8 MB and every resource of FHIR; the tests need only what
our output can contain. Kept: the resources we write (DiagnosticReport, Observation,
ImagingStudy, and Bundle / OperationOutcome around them) and every definition they reference,
transitively. Two deliberate changes, both narrowing what validates, never widening it:
- `ResourceList` (what `Bundle.entry.resource` and `contained` may hold: in the full file,
  any resource) becomes a oneOf of the kept resources only;
- the `description` texts are dropped (they do not take part in validation) to keep the
  committed file small.
Nothing else is edited. The output is deterministic (sorted keys), so re-running the
script on the same input gives the same bytes.
"""

import hashlib
import json
import sys

SOURCE = (
    "HL7 FHIR R4 4.0.1 fhir.schema.json (https://hl7.org/fhir/R4/fhir.schema.json.zip), "
    "copy at github.com/phtal-org/fhir-schema-json@e6e02fa025efa7097fe11977202310b0eade7d0a "
    "with its patch.json undone"
)
# The patch phtal-org applied on top of HL7's file (their patch.json), undone here.
UNDO_PATCH = ["Patient", "Appointment", "Encounter"]
ROOTS = ["Bundle", "DiagnosticReport", "ImagingStudy", "Observation", "OperationOutcome"]


def refs(node):
    """Every local `#/definitions/X` referenced anywhere under `node`."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#/definitions/"):
                yield value[len("#/definitions/"):]
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def strip_descriptions(node):
    """A copy without `description` annotations (a property *named* description stays)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                continue
            if key == "properties" and isinstance(value, dict):
                out[key] = {name: strip_descriptions(prop) for name, prop in value.items()}
            else:
                out[key] = strip_descriptions(value)
        return out
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    raw = open(argv[1], "rb").read()
    full = json.loads(raw)
    if full.get("id") != "http://hl7.org/fhir/json-schema/4.0":
        print(f"not the FHIR R4 schema: id {full.get('id')!r}", file=sys.stderr)
        return 1
    definitions = full["definitions"]
    versions = definitions["ImplementationGuide"]["properties"]["fhirVersion"]["items"]["enum"]
    if "4.0.1" not in versions:
        print("not FHIR 4.0.1 (ImplementationGuide.fhirVersion lacks 4.0.1)", file=sys.stderr)
        return 1
    for name in UNDO_PATCH:
        definitions[name]["additionalProperties"] = False

    definitions["ResourceList"] = {
        "oneOf": [{"$ref": f"#/definitions/{name}"} for name in ROOTS]
    }
    keep, todo = set(), list(ROOTS) + ["ResourceList"]
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        if name not in definitions:
            print(f"dangling reference #/definitions/{name}", file=sys.stderr)
            return 1
        keep.add(name)
        todo.extend(refs(definitions[name]))

    subset = {
        "$schema": full["$schema"],
        "id": full["id"],
        "description": (
            f"Subset of {SOURCE} (input sha256 {hashlib.sha256(raw).hexdigest()}), made by "
            "scripts/fhir/extract_schema_subset.py: the definitions DiagnosticReport, "
            "Observation, ImagingStudy, Bundle and OperationOutcome reference, ResourceList "
            "narrowed to those resources, descriptions dropped."
        ),
        "discriminator": {
            "propertyName": "resourceType",
            "mapping": {name: f"#/definitions/{name}" for name in ROOTS},
        },
        "oneOf": [{"$ref": f"#/definitions/{name}"} for name in ROOTS],
        "definitions": {name: strip_descriptions(definitions[name]) for name in sorted(keep)},
    }
    with open(argv[2], "w", encoding="utf-8") as out:
        json.dump(subset, out, indent=1, sort_keys=True, ensure_ascii=False)
        out.write("\n")
    print(f"{len(keep)} definitions written to {argv[2]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
