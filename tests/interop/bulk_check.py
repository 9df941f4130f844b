"""An independent Bulk Data client, written from the FHIR Bulk Data Access IG 2.0 and SMART Backend Services
alone (no Kindling code): it registers a backend app with its own RS384 key, gets a `system/*.rs` token
with a `private_key_jwt` assertion (PyJWT), runs a system-level and a Group-level export against a running,
token-enforcing `kindling up` (kick-off with `Prefer: respond-async`, polling that honours `Retry-After`,
downloads with the token), validates every exported resource with fhir.resources (R4B models, which share
R4's shapes for these resources), and cancels a job.

Usage: python bulk_check.py FHIR_BASE KINDLING_BIN DATA_DIR
"""

import json
import subprocess
import sys
import tempfile
import time
import uuid

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from fhir.resources.R4B import get_fhir_model_class

base, kindling, data_dir = sys.argv[1:4]
passed = 0


def check(cond, what):
    global passed
    if not cond:
        print(f"FAILED: {what}")
        sys.exit(1)
    passed += 1


# 1. A backend app with its own key, registered as an EHR administrator would.
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
jwk.update({"kid": "bulk-1", "alg": "RS384", "use": "sig"})
with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    json.dump({"keys": [jwk]}, f)
    jwks_file = f.name
client_id = "bulk-interop"
subprocess.run(
    [kindling, "apps", "--data", data_dir, "add", "--client-id", client_id, "--name", "Bulk interop", "--type", "confidential-asymmetric",
     "--redirect-uri", "https://bulk.example/unused", "--scope", "system/*.rs", "--jwks-file", jwks_file],
    check=True, capture_output=True,
)

# 2. SMART Backend Services: discovery, then client_credentials with a signed assertion.
config = requests.get(f"{base}/.well-known/smart-configuration").json()
token_endpoint = config["token_endpoint"]
check("client_credentials" in config.get("grant_types_supported", []), "the server offers client_credentials")
now = int(time.time())
assertion = jwt.encode({"iss": client_id, "sub": client_id, "aud": token_endpoint, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())},
                       key, algorithm="RS384", headers={"kid": "bulk-1", "typ": "JWT"})
r = requests.post(token_endpoint, data={
    "grant_type": "client_credentials", "scope": "system/*.rs",
    "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer", "client_assertion": assertion,
})
check(r.status_code == 200, f"a backend token ({r.status_code} {r.text[:200]})")
token = r.json()["access_token"]
auth = {"Authorization": f"Bearer {token}"}


def kick_off(path):
    r = requests.get(f"{base}/{path}", headers={**auth, "Accept": "application/fhir+json", "Prefer": "respond-async"})
    check(r.status_code == 202 and "Content-Location" in r.headers, f"{path}: 202 with Content-Location ({r.status_code} {r.text[:200]})")
    return r.headers["Content-Location"]


def wait(status_url):
    for _ in range(600):
        r = requests.get(status_url, headers=auth)
        if r.status_code == 202:
            time.sleep(min(float(r.headers.get("Retry-After", "1")), 2.0))
            continue
        check(r.status_code == 200, f"the status answers 200 when complete ({r.status_code} {r.text[:200]})")
        return r.json()
    check(False, "the export completed within the polls")


def download(manifest):
    resources = {}
    for out in manifest["output"]:
        r = requests.get(out["url"], headers=auth)
        check(r.status_code == 200, f"{out['url']} downloads with the token")
        check(r.headers["Content-Type"].startswith("application/fhir+ndjson"), f"NDJSON: {r.headers['Content-Type']}")
        lines = [line for line in r.text.split("\n") if line.strip()]
        check(len(lines) == out["count"], f"{out['type']}: {len(lines)} lines, the manifest says {out['count']}")
        model = get_fhir_model_class(out["type"])
        for line in lines:
            resource = json.loads(line)
            check(resource["resourceType"] == out["type"], f"a {out['type']} file holds {resource['resourceType']}")
            model.model_validate(resource)
            resources.setdefault(out["type"], []).append(resource)
    return resources


# 3. System level: every type, every resource validated.
status_url = kick_off("$export")
manifest = wait(status_url)
check(manifest["requiresAccessToken"] is True and "transactionTime" in manifest, "manifest fields")
check(requests.get(manifest["output"][0]["url"]).status_code == 401, "files need the token")
system = download(manifest)
check({"Patient", "Observation", "Condition", "Encounter"} <= set(system), f"the clinical types are exported: {sorted(system)}")
total = sum(len(v) for v in system.values())

# 4. Group level: a generated cohort; only its members' records.
groups = requests.get(f"{base}/Group", headers={**auth, "Accept": "application/fhir+json"}).json()
check(groups.get("total", 0) >= 1 or groups.get("entry"), "the sandbox has Groups")
group = groups["entry"][0]["resource"]
members = {m["entity"]["reference"] for m in group.get("member", []) if not m.get("inactive")}
group_export = download(wait(kick_off(f"Group/{group['id']}/$export")))
patients = {f"Patient/{p['id']}" for p in group_export.get("Patient", [])}
check(patients == members, f"the Group export holds its members: {sorted(patients)} vs {sorted(members)}")
for ty, items in group_export.items():
    for item in items:
        subject = (item.get("subject") or item.get("patient") or {}).get("reference")
        if subject and subject.startswith("Patient/"):
            check(subject in members, f"{ty}/{item['id']} belongs to a member")

# 5. Cancel.
status_url = kick_off("$export?_type=Patient")
r = requests.delete(status_url, headers=auth)
check(r.status_code == 202, f"cancel: 202 ({r.status_code})")
check(requests.get(status_url, headers=auth).status_code == 404, "a cancelled job is gone")

print(f"bulk interop: {passed} checks passed; {total} resources of {len(system)} types exported and validated, "
      f"Group '{group.get('name', group['id'])}' with {len(members)} members")
