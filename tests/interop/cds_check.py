"""An independent CDS Hooks 2.0 service, written from the CDS Hooks specification alone (no Kindling code):
Python's http.server for the endpoints, PyJWT to verify the EHR's signed calls against the EHR's JWK Set,
fhir.resources (R4B models) to validate what was prefetched. It is registered with a running, token-enforcing
`kindling up` (`kindling cds add --client`), a clinician opens a chart, and the check asserts that the EHR called the
service the way the specification says (discovery, `patient-view`, prefetch, an RS384 JWT whose `aud` is the
service's URL), shows its card with its links, and launches the card's SMART link. The service reads the
record with the `fhirAuthorization` token it was handed (the chart's patient only). Then the clinician
drafts a potassium test: the service's `order-sign` card suggests a basic metabolic panel instead, the
clinician accepts it, the panel is signed into the record, and the service receives the feedback.

Usage: python cds_check.py SERVER_ROOT KINDLING_BIN DATA_DIR
"""

import html
import json
import re
import subprocess
import time
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
        }, {
            "hook": "order-sign", "id": "py-orders", "title": "Python order check",
            "description": "Suggests a basic metabolic panel for a potassium test ordered alone.",
        }]})

    def do_POST(self):
        url = f"http://{self.server.server_address[0]}:{self.server.server_address[1]}{self.path}"
        if self.path.endswith("/py-orders") or self.path.endswith("/feedback"):
            return self.orders(url)
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
        # fhirAuthorization: the service reads with the token it was handed, and only what it grants.
        fa = body.get("fhirAuthorization")
        if fa:
            bearer = {"Authorization": f"Bearer {fa['access_token']}"}
            pid = body["context"]["patientId"]
            reads["own"] = requests.get(f"{body['fhirServer']}/Patient/{pid}", headers=bearer).status_code
            reads["other"] = requests.get(f"{body['fhirServer']}/Patient/{other_pid}", headers=bearer).status_code
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


    def verified(self, url):
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        key = jwks.get_signing_key(jwt.get_unverified_header(token)["kid"]).key
        return jwt.decode(token, key, algorithms=["RS384", "ES384"], audience=url, issuer=fhir_base,
                          options={"require": ["exp", "iat", "jti", "iss", "aud"]})

    def orders(self, url):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        try:
            claims = self.verified(url)
        except Exception as e:  # noqa: BLE001 - any failure is a refused call
            order_calls.append((f"refused: {e}", body))
            return self.answer(401, {"error": str(e)})
        if url.endswith("/feedback"):
            feedback.append((claims, body))
            return self.answer(200, {})
        order_calls.append((claims, body))
        cards = []
        for e in body["context"]["draftOrders"]["entry"]:
            order = get_fhir_model_class(e["resource"]["resourceType"]).model_validate(e["resource"])
            codes = [c.code for c in (getattr(order, "code", None) and order.code.coding or [])]
            if order.status == "draft" and "2823-3" in codes:
                cards.append({
                    "uuid": card_uuid, "summary": "Potassium ordered alone: consider a basic metabolic panel", "indicator": "warning",
                    "detail": "A basic metabolic panel includes potassium with sodium, creatinine and glucose.",
                    "source": {"label": "Python order check"}, "selectionBehavior": "at-most-one",
                    "overrideReasons": [{"system": "urn:py", "code": "alone", "display": "Potassium alone is enough"}],
                    "suggestions": [{"label": "Order a basic metabolic panel instead", "uuid": suggestion_uuid, "actions": [
                        {"type": "delete", "description": "Remove the potassium test", "resourceId": f"ServiceRequest/{order.id}"},
                        {"type": "create", "description": "Order a basic metabolic panel", "resource": {
                            "resourceType": "ServiceRequest", "status": "draft", "intent": "order",
                            "code": {"coding": [{"system": "http://loinc.org", "code": "51990-0", "display": "Basic metabolic panel - Blood"}]},
                            "subject": {"reference": f"Patient/{body['context']['patientId']}"}}},
                    ]}],
                })
        self.answer(200, {"cards": cards})


order_calls = []  # order-sign calls: (claims or the error, body)
feedback = []  # (claims, body)
reads = {}  # what the service read with its fhirAuthorization token: status codes
card_uuid, suggestion_uuid = str(uuid.uuid4()), str(uuid.uuid4())
server = ThreadingHTTPServer(("127.0.0.1", 0), Service)
threading.Thread(target=server.serve_forever, daemon=True).start()
service_base = f"http://127.0.0.1:{server.server_address[1]}/cds-services"

# 1. Registered as an administrator would: the service is an OAuth client of its own, for fhirAuthorization.
subprocess.run([kindling, "apps", "--data", data_dir, "add", "--name", "Python CDS service", "--type", "confidential-symmetric",
                "--redirect-uri", "https://127.0.0.1/unused", "--scope", "patient/*.rs", "--client-id", "py-cds"],
               check=True, capture_output=True)
subprocess.run([kindling, "cds", "--data", data_dir, "add", "py-greeting", "--name", "Python service", "--url", service_base, "--client", "py-cds"],
               check=True, capture_output=True)
listed = subprocess.run([kindling, "cds", "--data", data_dir, "list"], check=True, capture_output=True, text=True).stdout
check(service_base in listed, f"kindling cds list shows the service: {listed}")

# 2. A patient, and a clinician who opens the chart.
token = subprocess.run([kindling, "token", "--data", data_dir, "--user", "clinician", "--scope", "user/Patient.rs user/ServiceRequest.rs"],
                       check=True, capture_output=True, text=True).stdout.strip()
patients = requests.get(f"{fhir_base}/Patient", params={"_count": "2"}, headers={"Authorization": f"Bearer {token}"}).json()
pid = patients["entry"][0]["resource"]["id"]
other_pid = patients["entry"][1]["resource"]["id"]
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

greeting = summary.group(2)

# 6. fhirAuthorization: a short-lived read token of the service's own client, for this patient only.
fa = body.get("fhirAuthorization") or {}
shown = {k: v for k, v in fa.items() if k != "access_token"}  # never print a token
check(fa.get("token_type") == "Bearer" and fa.get("subject") == "py-cds" and fa.get("patient") == pid, f"fhirAuthorization {shown}")
check(0 < fa.get("expires_in", 0) <= 300 and "patient/Condition.rs" in fa.get("scope", "").split(), f"short-lived, scoped to the prefetch: {shown}")
check(reads == {"own": 200, "other": 403}, f"the token reads the chart's patient and no other: {reads}")

# 7. Orders: order-sign carries the draft; the card's suggestion, accepted, changes it; feedback arrives.
orders = f"{root}/ehr/patients/{pid}/orders"
csrf = field("csrf", browser.get(orders).text)
r = browser.post(orders, data={"csrf": csrf, "item": "potassium"}, allow_redirects=False)
check(r.status_code == 303, f"a potassium test is drafted ({r.status_code})")
r = browser.post(f"{orders}/sign", data={"csrf": csrf}, allow_redirects=False)
check(r.status_code == 303 and r.headers["Location"].endswith("#review"), f"signing waits for the warning ({r.status_code})")
signed_calls = [(c, b) for c, b in order_calls if isinstance(c, dict)]
check(len(signed_calls) == 1 and len(order_calls) == 1, f"one order-sign call, verified: {[c for c, _ in order_calls]}")
sign_body = signed_calls[0][1]
check(sign_body["hook"] == "order-sign" and sign_body["context"]["patientId"] == pid, "the order-sign context")
draft = sign_body["context"]["draftOrders"]["entry"][0]["resource"]
get_fhir_model_class("ServiceRequest").model_validate(draft)
check(draft["status"] == "draft" and draft["subject"]["reference"] == f"Patient/{pid}", f"the draft order: {draft}")
page = browser.get(orders).text
summary = re.search(r'<h3 id="cds-s-(\d+)"><span class="cds-indicator">Warning:</span> Potassium ordered alone', page)
check(summary is not None, f"the warning is shown before signing: {page[:3000]}")
article = re.search(rf'<article[^>]*aria-labelledby="cds-s-{summary.group(1)}">(.*?)</article>', page, flags=re.S).group(1)
accept = {"csrf": csrf, "ref": field("ref", article), "card": summary.group(1), "action": "accept", "suggestion": "0"}
r = browser.post(f"{orders}/cards", data=accept, allow_redirects=False)
check(r.status_code == 303, f"the suggestion is accepted ({r.status_code})")
r = browser.post(f"{orders}/sign", data={"csrf": csrf}, allow_redirects=False)
check(r.status_code == 200 and "Orders signed" in r.text and "Basic metabolic panel" in r.text, f"signed as changed ({r.status_code})")
active = requests.get(f"{fhir_base}/ServiceRequest", params={"patient": pid, "status": "active"}, headers={"Authorization": f"Bearer {token}"}).json()
codes = [c["code"] for e in active.get("entry", []) for c in e["resource"]["code"]["coding"]]
check("51990-0" in codes and "2823-3" not in codes, f"the panel, not the potassium test, is in the record: {codes}")
for _ in range(50):
    if feedback:
        break
    time.sleep(0.1)
check(len(feedback) == 1, f"one feedback: {feedback}")
claims, fb = feedback[0]
check(claims["aud"] == f"{service_base}/py-orders/feedback", "feedback's JWT is for the feedback URL")
item = fb["feedback"][0]
check(item["card"] == card_uuid and item["outcome"] == "accepted" and item["acceptedSuggestions"] == [{"id": suggestion_uuid}], f"feedback {item}")

server.shutdown()
print(f"cds interop: {passed} checks passed; card '{greeting}' shown and launched; an order changed by a suggestion and signed")
