"""Interop with the official Python SMART client (PyPI `fhirclient`, SMART Health IT's client-py): a
standalone launch against a running, token-enforcing Kindling. The library finds the authorisation server
in the CapabilityStatement's `oauth-uris` extension, sends PKCE (S256), and exchanges the code; the person's
part (the real sign-in and consent pages) is played by an HTTP session, as a browser would post the forms.

Usage: python clientpy_check.py FHIR_BASE KINDLING_BIN DATA_DIR
"""

import re
import subprocess
import sys
import urllib.parse

import requests
from fhirclient import client
from fhirclient.models.observation import Observation
from fhirclient.models.patient import Patient

base, kindling, data_dir = sys.argv[1:4]
root = base.rsplit("/fhir", 1)[0]
passed = 0


def check(cond, what):
    global passed
    if not cond:
        print(f"FAILED: {what}")
        sys.exit(1)
    passed += 1


def field(page, name):
    return [urllib.parse.unquote(v) for v in re.findall(rf'name="{name}" value="([^"]*)"', page)]


# The callback is never fetched: the test reads the code from the redirect, as the app's server would.
redirect = "http://127.0.0.1:9/callback"
scope = "launch/patient openid fhirUser offline_access patient/*.rs"
subprocess.run(
    [kindling, "apps", "--data", data_dir, "add", "--client-id", "clientpy-interop", "--name", "client-py interop",
     "--type", "public", "--redirect-uri", redirect, "--scope", scope],
    check=True, capture_output=True,
)

smart = client.FHIRClient(settings={"app_id": "clientpy-interop", "api_base": base, "redirect_uri": redirect, "scope": scope})
url = smart.authorize_url
check(url is not None and url.startswith(f"{root}/auth/authorize?"), f"the library found the authorize endpoint in /metadata: {url}")
params = urllib.parse.parse_qs(urllib.parse.urlparse(url).query)
check(params.get("code_challenge_method") == ["S256"] and params.get("aud") == [base], f"PKCE S256 and aud: {params}")

browser = requests.Session()
browser.headers["Origin"] = root
page = browser.get(url)
check(page.status_code == 200 and "Sign in" in page.text, "the sign-in page")
r = browser.post(f"{root}/auth/login", data={"request": field(page.text, "request")[0], "username": "patient", "password": "kindling-patient"},
                 allow_redirects=False)
check(r.status_code == 200 and "would like to" in r.text, f"the consent page ({r.status_code})")
form = [("request", field(r.text, "request")[0]), ("decision", "allow")] + [("scope", s) for s in field(r.text, "scope")]
r = browser.post(f"{root}/auth/consent", data=form, allow_redirects=False)
check(r.status_code == 303 and r.headers["location"].startswith(redirect), f"back to the app with a code ({r.status_code})")

smart.handle_callback(r.headers["location"])
check(smart.ready, "the library exchanged the code for tokens")
patient_id = smart.patient_id
check(bool(patient_id), "the token response named the patient")
patient = Patient.read(patient_id, smart.server)
check(patient.name and patient.name[0].family, f"read Patient/{patient_id} with the token")
vitals = Observation.where(struct={"patient": patient_id, "category": "vital-signs", "_count": "5"}).perform_resources(smart.server)
check(len(vitals) > 0 and all(o.subject.reference == f"Patient/{patient_id}" for o in vitals), "searched the patient's vital signs")
check(smart.server.reauthorize(), "refreshed the access token")
check(Patient.read(patient_id, smart.server).id == patient_id, "read again with the refreshed token")
try:
    Patient.read("kp-1-0002" if patient_id != "kp-1-0002" else "kp-1-0003", smart.server)
    check(False, "another patient's record was readable")
except Exception as e:
    check("403" in str(e) or "Forbidden" in str(e), f"another patient's record is refused: {e}")

print(f"client-py: {passed} passed, 0 failed")
