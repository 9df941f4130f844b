"""Interop check with independent FHIR tooling.

fhirpy (a FHIR client by Beda Software) creates, reads, updates, searches and pages through a running
Kindling; fhir.resources (pydantic models of the FHIR specification, R4B module, which shares R4's shapes for
these types) validates every resource and Bundle the server returns.

Usage: python fhirpy_check.py BASE_URL   (exits non-zero on the first failure)
"""

import sys

from fhirpy import SyncFHIRClient
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
import requests

base = sys.argv[1].rstrip("/")
client = SyncFHIRClient(base, extra_headers={"Accept": "application/fhir+json"})
checks = 0


def check(cond, what):
    global checks
    if not cond:
        print(f"FAILED: {what}")
        sys.exit(1)
    checks += 1


cs = requests.get(f"{base}/metadata", timeout=10).json()
CapabilityStatement.model_validate(cs)
check(cs["fhirVersion"] == "4.0.1", "CapabilityStatement fhirVersion")

patient = client.resource(
    "Patient",
    name=[{"family": "Interop", "given": ["Fhirpy"]}],
    gender="female",
    birthDate="1984-02-29",
    identifier=[{"system": "urn:interop", "value": "fhirpy-1"}],
)
patient.save()
check(patient.id is not None, "create assigns an id")
Patient.model_validate(patient.serialize())

fetched = client.reference("Patient", patient.id).to_resource()
Patient.model_validate(fetched.serialize())
check(fetched["name"][0]["family"] == "Interop", "read returns what was created")

fetched["gender"] = "other"
fetched.save()
again = client.reference("Patient", patient.id).to_resource()
check(again["gender"] == "other" and again["meta"]["versionId"] == "2", "update makes version 2")

for i in range(23):
    obs = client.resource(
        "Observation",
        status="final",
        category=[{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        code={"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        subject={"reference": f"Patient/{patient.id}"},
        effectiveDateTime=f"2021-03-{i + 1:02d}T08:00:00Z",
        valueQuantity={"value": 60 + i, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
    )
    obs.save()

search = client.resources("Observation").search(patient=patient.id, category="vital-signs").sort("-date").limit(10)
# fhirpy's count() sends Aidbox's non-standard `_totalMethod`, which this server refuses (strict handling
# by default); ask for the count the standard way.
counted = requests.get(f"{base}/Observation", params={"patient": patient.id, "_summary": "count"}, timeout=10).json()
check(counted["total"] == 23, "_summary=count")
first_page = requests.get(
    f"{base}/Observation", params={"patient": patient.id, "category": "vital-signs", "_sort": "-date", "_count": 10}, timeout=10
).json()
Bundle.model_validate(first_page)
seen = [Observation.model_validate(o.serialize()) for o in search.fetch_all()]
check(len(seen) == 23, f"fetch_all pages through every result (got {len(seen)})")
check(len({o.id for o in seen}) == 23, "no duplicates across pages")
dates = [o.effectiveDateTime for o in seen]
check(dates == sorted(dates, reverse=True), "sorted by -date across pages")

found = client.resources("Patient").search(identifier="urn:interop|fhirpy-1").first()
check(found is not None and found.id == patient.id, "token search by identifier")
with_includes = requests.get(
    f"{base}/Observation", params={"patient": patient.id, "_include": "Observation:patient", "_count": 2}, timeout=10
).json()
Bundle.model_validate(with_includes)
check(any(e["search"]["mode"] == "include" for e in with_includes["entry"]), "_include entries")

everything = requests.get(f"{base}/Patient/{patient.id}/$everything", timeout=10).json()
Bundle.model_validate(everything)


# Every resource of a synthetic patient's record validates against the specification's models.
from fhir.resources.R4B import get_fhir_model_class  # noqa: E402

seeded = requests.get(f"{base}/Patient", params={"_id": "kp-1-0001"}, timeout=10).json()
if seeded.get("total"):
    record = requests.get(f"{base}/Patient/kp-1-0001/$everything", params={"_count": 1000}, timeout=30).json()
    types = set()
    for entry in record["entry"]:
        resource = entry["resource"]
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        types.add(resource["resourceType"])
    check(len(types) >= 8, f"synthetic record spans many types ({sorted(types)})")
    print(f"fhir.resources validated {len(record['entry'])} synthetic resources of {len(types)} types")

print(f"fhirpy interop against {base}")
print(f"interop: {checks} passed, 0 failed")
