"""Writes the fuzzers' seed corpora (fuzz/corpus/<target>/) from the Synthea R4 test data and examples of
what clients send. Run by tools/fuzz.sh when a corpus is missing.

Usage: python3 tools/fuzz_seeds.py [SYNTHEA_DIR]
"""

import gzip
import json
import os
import shutil
import sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fuzz")
synthea = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "..", "..", "shared", "data", "synthea-r4")


def write(target, name, data):
    d = os.path.join(root, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# Scope strings (an allowance, then `;` and a request; without `;` the string is both): v1, v2,
# granular, launch context, junk that must be refused.
for i, s in enumerate([
    "launch openid fhirUser offline_access patient/*.rs user/*.rs",
    "launch/patient patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
    "patient/*.read user/Patient.write system/*.cruds launch/encounter online_access profile",
    "system/Observation.rs?category=vital-signs&code=http://loinc.org|85354-9 launch/patient?role=https://example.org/role",
    "patient/Condition.rs?category=http://hl7.org/fhir/us/core/CodeSystem/condition-category|health-concern",
    "user/*.* patient/Patient.r patient/Patient.srs openid openid",
    "launch openid fhirUser patient/*.rs user/*.rs;patient/Observation.rs?category=laboratory user/*.cruds openid",
    "patient/Observation.rs?category=laboratory launch/patient;patient/Observation.read patient/*.rs launch/patient",
    "system/*.cruds;system/Patient.write system/Observation.rs?code=http://loinc.org|1234-5",
]):
    write("scope", f"seed-{i}", s)

# Search: a type chosen by the first byte (0 Patient, 1 Observation, 2 Condition, 3 Encounter, ...), then
# the query string.
for i, (t, q) in enumerate([
    (0, "name=smith&birthdate=ge1970-01-01&_count=10&_sort=-_lastUpdated"),
    (1, "patient=Patient/kp-1-0001&category=laboratory&code=http://loinc.org|4548-4&date=ge2020&_include=Observation:patient"),
    (1, "subject:Patient.name=smith&value-quantity=gt5.4|http://unitsofmeasure.org|mg&_revinclude=Provenance:target"),
    (0, "_has:Observation:patient:code=1234-5&gender=female&_total=accurate&_elements=name,birthDate"),
    (2, "clinical-status=active&category=problem-list-item&onset-date=lt2020-05&_summary=count"),
    (3, "date=ge2020-01-01T00:00:00Z&date=le2021&type:text=visit&_id=a,b,c"),
    (4, "status=active&intent=order&authoredon=ap2021&medication.code=313782"),
    (5, "date=gt2026-01-01&agent=Practitioner/1&entity=Patient/2&outcome=0&_sort=date"),
    (0, "identifier=http://hospital.smarthealthit.org|1234&name:exact=Amy&address-postalcode:contains=02&_lastUpdated=ap2026"),
]):
    write("search", f"seed-{i}", bytes([t]) + q.encode())

# Resources (one of each type from the first Synthea bundles) and JSON Patches; import files (the kind by
# the first byte: 0 .json, 1 .ndjson, 2 .json.gz, 3 .ndjson.gz).
seen = {}
files = sorted(f for f in os.listdir(synthea) if f.endswith(".json.gz")) if os.path.isdir(synthea) else []
for f in sorted(files, key=lambda f: os.path.getsize(os.path.join(synthea, f)))[:3]:
    raw = open(os.path.join(synthea, f), "rb").read()
    write("import", f"synthea-{len(seen)}-gz", bytes([2]) + raw)
    bundle = json.loads(gzip.decompress(raw))
    for e in bundle.get("entry", []):
        r = e.get("resource", {})
        seen.setdefault(r.get("resourceType"), r)
for t, r in seen.items():
    write("resource", f"{t}", json.dumps(r))
if "Patient" in seen:
    p = seen["Patient"]
    write("resource", "patch-0", json.dumps([p, [{"op": "replace", "path": "/gender", "value": "other"}, {"op": "add", "path": "/name/0/given/-", "value": "X"}]]))
    write("resource", "patch-1", json.dumps([p, [{"op": "move", "from": "/name/0", "path": "/name/1"}, {"op": "test", "path": "/id", "value": p.get("id")}, {"op": "remove", "path": "/address"}]]))
    ndjson = "\n".join(json.dumps(r) for r in list(seen.values())[:8])
    write("import", "ndjson", bytes([1]) + ndjson.encode())
    write("import", "ndjson-gz", bytes([3]) + gzip.compress(ndjson.encode()))
    collection = {"resourceType": "Bundle", "type": "collection", "entry": [{"fullUrl": f"urn:uuid:{r.get('id')}", "resource": r} for r in list(seen.values())[:8]]}
    write("import", "collection", bytes([0]) + json.dumps(collection).encode())

# Client assertions: checked-in seeds signed with the fuzz keys (fuzz/fuzz_targets/jwks.json).
src = os.path.join(root, "seeds", "client_assertion")
for f in os.listdir(src):
    write("client_assertion", f, open(os.path.join(src, f), "rb").read())
print(f"seeded {root}/corpus: {sorted(os.listdir(os.path.join(root, 'corpus')))}")
