#!/usr/bin/env python3
"""Turns a dicom-samples `emr_bundle.json` (a FHIR R4 Bundle) into the kind of CSV export
a site's EMR gives: one row per order with its patient's columns, and one row per patient
without orders. Standard library only.

The CSV is derived from the FHIR Bundle here, independently of the Rust parsers, so that
`radserve emr import --format csv` can be checked against the same truth
(`true_pairs.json`) as the Bundle. The columns and value codes are those of
`scripts/emr/csv-mapping.example.toml`:

- birth dates as DD.MM.YYYY, sex as W/M/D/U (female/male/other/unknown);
- order date-times as local wall-clock time with the UTC offset: DD.MM.YYYY HH:MM +hhmm;
- order status as CM (completed), SC (active), CA (revoked), else the FHIR code.

Usage: bundle_to_csv.py emr_bundle.json export.csv
"""

import csv
import datetime
import json
import sys

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
COLUMNS = [
    "patient_id",
    "patient_id_issuer",
    "family_name",
    "given_names",
    "full_name",
    "birth_date",
    "sex",
    "accession_number",
    "placer_order_number",
    "procedure_code",
    "procedure_text",
    "order_date_time",
    "order_status",
    "reason",
    "encounter_id",
]
SEX = {"female": "W", "male": "M", "other": "D", "unknown": "U"}
STATUS = {"completed": "CM", "active": "SC", "revoked": "CA"}


def ref_id(reference, by_url):
    """The id a Reference points at: through the bundle's fullUrls, else Type/id."""
    ref = (reference or {}).get("reference", "")
    if ref in by_url:
        return by_url[ref]
    if ref.startswith("urn:uuid:"):
        return ref[len("urn:uuid:"):]
    return ref.rsplit("/", 1)[-1] if ref else ""


def identifier(resource, code):
    for ident in resource.get("identifier", []):
        codings = ident.get("type", {}).get("coding", [])
        if any(c.get("code") == code for c in codings) and ident.get("value"):
            return ident
    return None


def patient_columns(patient):
    mr = identifier(patient, "MR") or (patient.get("identifier") or [{}])[0]
    name = (patient.get("name") or [{}])[0]
    birth = patient.get("birthDate", "")
    if len(birth) == 10:
        birth = datetime.date.fromisoformat(birth).strftime("%d.%m.%Y")
    elif birth:
        raise SystemExit(f"partial birth date {birth!r} has no DD.MM.YYYY form")
    return {
        "patient_id": mr.get("value", ""),
        "patient_id_issuer": mr.get("system", ""),
        "family_name": name.get("family", ""),
        "given_names": " ".join(name.get("given", [])),
        "full_name": name.get("text", ""),
        "birth_date": birth,
        "sex": SEX.get(patient.get("gender", ""), ""),
    }


def order_columns(order, by_url):
    acsn = identifier(order, "ACSN")
    plac = identifier(order, "PLAC")
    code = order.get("code", {})
    coding = (code.get("coding") or [{}])[0]
    when = order.get("occurrenceDateTime") or order.get("occurrencePeriod", {}).get("start", "")
    if when:
        at = datetime.datetime.fromisoformat(when.replace("Z", "+00:00"))
        if at.tzinfo is None:
            raise SystemExit(f"order time {when!r} has no offset")
        when = at.strftime("%d.%m.%Y %H:%M %z")
    reasons = []
    for concept in order.get("reasonCode", []):
        if concept.get("text"):
            reasons.append(concept["text"])
        else:
            reasons += [c["display"] for c in concept.get("coding", []) if c.get("display")]
    return {
        "accession_number": acsn["value"] if acsn else "",
        "placer_order_number": plac["value"] if plac else "",
        "procedure_code": coding.get("code", ""),
        "procedure_text": coding.get("display") or code.get("text", ""),
        "order_date_time": when,
        "order_status": STATUS.get(order.get("status", ""), order.get("status", "")),
        "reason": "; ".join(reasons),
        "encounter_id": ref_id(order.get("encounter"), by_url) if order.get("encounter") else "",
    }


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    with open(sys.argv[1], encoding="utf-8") as f:
        bundle = json.load(f)
    entries = [e for e in bundle.get("entry", []) if "resource" in e]
    by_url = {e["fullUrl"]: e["resource"]["id"] for e in entries if "fullUrl" in e}
    patients = {
        e["resource"]["id"]: e["resource"]
        for e in entries
        if e["resource"]["resourceType"] == "Patient"
    }
    rows, ordered = [], set()
    for e in entries:
        order = e["resource"]
        if order["resourceType"] != "ServiceRequest":
            continue
        patient_id = ref_id(order.get("subject"), by_url)
        if patient_id not in patients:
            continue  # an order whose patient is not in the export
        if not identifier(order, "ACSN") and not identifier(order, "PLAC"):
            continue  # an order the export cannot name
        ordered.add(patient_id)
        rows.append({**patient_columns(patients[patient_id]), **order_columns(order, by_url)})
    for patient_id, patient in patients.items():
        if patient_id not in ordered:
            rows.append(patient_columns(patient))
    with open(sys.argv[2], "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} rows ({len(patients)} patients) to {sys.argv[2]}", file=sys.stderr)


if __name__ == "__main__":
    main()
