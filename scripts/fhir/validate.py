#!/usr/bin/env python3
"""Validates FHIR R4 JSON resources against a JSON Schema, offline.

Usage:
    validate.py SCHEMA FILE...

SCHEMA is normally scripts/fhir/fhir-r4-subset.schema.json (see extract_schema_subset.py
for where it comes from); each FILE holds one resource (a Bundle counts as one). Nothing is
fetched: the schema's references are all local. Prints every error with its JSON path and
exits 1 when any file is invalid, 2 on bad usage or unreadable input. Needs the Python
package `jsonschema` (scripts/install-test-deps.sh installs it).
"""

import json
import sys

import jsonschema


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        with open(argv[1], encoding="utf-8") as f:
            schema = json.load(f)
    except (OSError, ValueError) as e:
        print(f"{argv[1]}: {e}", file=sys.stderr)
        return 2
    # FHIR's schema is draft-06; checking the schema itself catches a broken subset.
    jsonschema.Draft6Validator.check_schema(schema)
    validator = jsonschema.Draft6Validator(schema)
    invalid = 0
    for path in argv[2:]:
        try:
            with open(path, encoding="utf-8") as f:
                resource = json.load(f)
        except (OSError, ValueError) as e:
            print(f"{path}: {e}", file=sys.stderr)
            return 2
        # Against the definition of its own resourceType first: the root's oneOf would
        # only say "not valid under any of the given schemas".
        kind = resource.get("resourceType") if isinstance(resource, dict) else None
        target = validator
        if isinstance(kind, str) and kind in schema.get("definitions", {}):
            target = jsonschema.Draft6Validator(
                {"definitions": schema["definitions"], "$ref": f"#/definitions/{kind}"}
            )
        errors = list(target.iter_errors(resource)) or list(validator.iter_errors(resource))
        for error in sorted(errors, key=lambda e: list(e.absolute_path)):
            # oneOf failures (Bundle entries) hide the cause in their context.
            causes = error.context or [error]
            best = max(causes, key=lambda e: len(e.absolute_path))
            where = "/".join(str(p) for p in best.absolute_path) or "(root)"
            print(f"{path}: {where}: {best.message[:500]}", file=sys.stderr)
        if errors:
            invalid += 1
    if invalid:
        print(f"{invalid} of {len(argv) - 2} files invalid", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
