"""An independent CDS Hooks 2.0 service, written from the CDS Hooks specification alone (no Kindling code):
Python's http.server for the endpoints, PyJWT to verify the EHR's signed calls against the EHR's JWK Set,
fhir.resources (R4B models) to validate what was prefetched. It is registered with a running, token-enforcing
`kindling up` (`kindling cds add`), a clinician opens a chart, and the check asserts that the EHR called the
service the way the specification says (discovery, `patient-view`, prefetch, an RS384 JWT whose `aud` is the
service's URL), shows its card with its links, and launches the card's SMART link.

Usage: python cds_check.py SERVER_ROOT KINDLING_BIN DATA_DIR
"""

import html
import json
import re
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import requests
from fhir.resources.R4B import get_fhir_model_class

root, kindling, data_dir = sys.argv[1:4]
root = root.rstrip("/")
fhir_base = f"{root}/fhir"
passed = 0
calls = []  # (verified claims or the error, request body)


def check(cond, what):
    global passed
    if not cond:
        print(f"FAILED: {what}")
        sys.exit(1)
    passed += 1


jwks = jwt.PyJWKClient(f"{root}/auth/jwks")


class Service(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path != "/cds-services":
            return self.answer(404, {"error": "not found"})
        self.answer(200, {"services": [{
            "hook": "patient-view", "id": "py-greeting", "title": "Python greeting", "description": "Greets the patient by name.",
            "prefetch": {"patient": "Patient/{{context.patientId}}", "conditions": "Condition?patient={{context.patientId}}&clinical-status=active"},
        }]})

    def do_POST(self):
        url = f"http://{self.server.server_address[0]}:{self.server.server_address[1]}{self.path}"
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        auth = self.headers.get("Authorization", "")
        try:
            token = auth.removeprefix("Bearer ")
            header = jwt.get_unverified_header(token)
            if header.get("jku") != f"{root}/auth/jwks":
                raise ValueError(f"unexpected jku {header.get('jku')}")
            key = jwks.get_signing_key(header["kid"]).key
            claims = jwt.decode(token, key, algorithms=["RS384", "ES384"], audience=url, issuer=fhir_base,
                                options={"require": ["exp", "iat", "jti", "iss", "aud"]})
            if claims["exp"] - claims["iat"] > 300:
                raise ValueError("the JWT lives longer than five minutes")
        except Exception as e:  # noqa: BLE001 - any failure is a refused call
            calls.append((f"refused: {e}", body))
            return self.answer(401, {"error": str(e)})
        calls.append((claims, body))
        patient = get_fhir_model_class("Patient").model_validate(body["prefetch"]["patient"])
        name = " ".join((patient.name[0].given or []) + [patient.name[0].family or ""]).strip()
        active = len((body["prefetch"].get("conditions") or {}).get("entry", []))
        self.answer(200, {"cards": [{
            "uuid": str(uuid.uuid4()),
            "summary": f"Hello from Python: {name} has {active} active conditions",
            "indicator": "info",
            "detail": "Written with **Python** and *PyJWT*; see [the specification](https://cds-hooks.hl7.org/2.0/).",
            "source": {"label": "Python greeting service", "url": "https://cds-hooks.hl7.org/"},
            "links": [
                {"label": "CDS Hooks 2.0", "url": "https://cds-hooks.hl7.org/2.0/", "type": "absolute"},
                {"label": "Open the patient summary", "url": f"{root}/app/launch", "type": "smart", "appContext": json.dumps({"topic": "blood-pressure"})},
            ],
        }]})


server = ThreadingHTTPServer(("127.0.0.1", 0), Service)
threading.Thread(target=server.serve_forever, daemon=True).start()
service_base = f"http://127.0.0.1:{server.server_address[1]}/cds-services"

# 1. Registered as an administrator would.
subprocess.run([kindling, "cds", "--data", data_dir, "add", "py-greeting", "--name", "Python service", "--url", service_base],
               check=True, capture_output=True)
listed = subprocess.run([kindling, "cds", "--data", data_dir, "list"], check=True, capture_output=True, text=True).stdout
check(service_base in listed, f"kindling cds list shows the service: {listed}")

# 2. A patient, and a clinician who opens the chart.
token = subprocess.run([kindling, "token", "--data", data_dir, "--user", "clinician", "--scope", "user/Patient.rs"],
                       check=True, capture_output=True, text=True).stdout.strip()
patients = requests.get(f"{fhir_base}/Patient", params={"_count": "1"}, headers={"Authorization": f"Bearer {token}"}).json()
pid = patients["entry"][0]["resource"]["id"]
browser = requests.Session()
r = browser.post(f"{root}/ehr/login", data={"username": "clinician", "password": "kindling-clinician"}, allow_redirects=False)
check(r.status_code == 303, f"the clinician signs in ({r.status_code})")
r = browser.get(f"{root}/ehr/patients/{pid}/cds")
check(r.status_code == 200, f"the chart's cards ({r.status_code})")
page = r.text

# 3. The call, as the specification has it.
ok = [(c, b) for c, b in calls if isinstance(c, dict)]
check(len(ok) == 1 and len(calls) == 1, f"one call, verified: {[c for c, _ in calls]}")
claims, body = ok[0]
check(body["hook"] == "patient-view" and uuid.UUID(body["hookInstance"]), "hook and hookInstance")
check(body["fhirServer"] == fhir_base, "fhirServer is the EHR's FHIR base")
check(body["context"]["patientId"] == pid and body["context"]["userId"].startswith("Practitioner/"), f"context {body['context']}")
check(body["prefetch"]["patient"]["id"] == pid, "the patient was prefetched")
conditions = body["prefetch"]["conditions"]
check(conditions["resourceType"] == "Bundle", "a search prefetch is a Bundle")
for e in conditions.get("entry", []):
    get_fhir_model_class("Condition").model_validate(e["resource"])
    check(e["resource"]["subject"]["reference"].endswith(f"Patient/{pid}"), "prefetched conditions are the chart's patient's")
check(claims["aud"] == f"{service_base}/py-greeting", "aud is the service's URL")

# 4. The card in the chart: summary, indicator, escaped Markdown, source, both links.
summary = re.search(r'<h3 id="cds-s-(\d+)"><span class="cds-indicator">Information:</span> (Hello from Python[^<]*)</h3>', page)
check(summary is not None, f"the card is shown: {page[:2000]}")
index = summary.group(1)
check("<strong>Python</strong>" in page and "<em>PyJWT</em>" in page, "the detail's Markdown is rendered")
check('href="https://cds-hooks.hl7.org/2.0/" target="_blank" rel="noopener noreferrer"' in page, "the absolute link opens in a new tab")
problems = re.findall(r'<p class="cds-problem">(.*?)</p>', page)
check(not any("Python" in p for p in problems), f"no problem reported for the service: {problems}")

# 5. The SMART link launches the app the card names, registered with the EHR.
def field(name, text):
    return html.unescape(re.search(rf'name="{name}" value="([^"]*)"', text).group(1))


article = re.search(rf'<article[^>]*aria-labelledby="cds-s-{index}">(.*?)</article>', page, flags=re.S).group(1)
form = {"csrf": field("csrf", article), "ref": field("ref", article), "card": field("card", article), "link": field("link", article)}
r = browser.post(f"{root}/ehr/cds/launch", data=form, allow_redirects=False)
check(r.status_code == 303, f"the SMART link launches ({r.status_code})")
to = r.headers["Location"]
check(to.startswith(f"{root}/app/launch?iss=") and "launch=" in to, f"the reference app's launch URL with iss and launch: {to}")

server.shutdown()
print(f"cds interop: {passed} checks passed; card '{summary.group(2)}' shown and launched")
