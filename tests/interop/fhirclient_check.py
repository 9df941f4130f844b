"""Interop with the SMART JavaScript client library (npm `fhirclient`, by SMART Health IT) in headless
Chromium: a standalone launch against a running, token-enforcing Kindling — discovery, PKCE, the real
sign-in and consent pages, the code exchange, FHIR reads with the token, and a refresh.

Usage: python fhirclient_check.py FHIR_BASE KINDLING_BIN DATA_DIR FHIR_CLIENT_JS
"""

import functools
import http.server
import json
import shutil
import subprocess
import sys
import tempfile
import threading

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

base, kindling, data_dir, library = sys.argv[1:5]
here = __file__.rsplit("/", 1)[0]
passed = 0


def check(cond, what):
    global passed
    if not cond:
        print(f"FAILED: {what}")
        sys.exit(1)
    passed += 1


# The app's pages, served on a port of their own.
site = tempfile.mkdtemp()
for name in ["launch.html", "index.html"]:
    shutil.copy(f"{here}/fhirclient/{name}", site)
shutil.copy(library, f"{site}/fhir-client.js")
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


handler = functools.partial(Quiet, directory=site)
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
port = server.server_address[1]
threading.Thread(target=server.serve_forever, daemon=True).start()
app_url = f"http://127.0.0.1:{port}"

# Register the app the way an administrator would.
subprocess.run(
    [kindling, "apps", "--data", data_dir, "add", "--client-id", "fhirclient-interop", "--name", "fhirclient interop",
     "--type", "public", "--redirect-uri", f"{app_url}/index.html", "--launch-url", f"{app_url}/launch.html",
     "--scope", "launch launch/patient openid fhirUser offline_access patient/*.rs user/*.rs"],
    check=True, capture_output=True,
)

options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tempfile.mkdtemp()}"]:
    options.add_argument(flag)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
try:
    wait = WebDriverWait(driver, 30)
    driver.get(f"{app_url}/launch.html?iss={base}")
    wait.until(EC.presence_of_element_located((By.ID, "username")))
    check("Sign in" in driver.title, "the library reached Kindling's sign-in page")
    driver.find_element(By.ID, "username").send_keys("patient")
    driver.find_element(By.ID, "password").send_keys("kindling-patient")
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "button[value=allow]")))
    check("would like to" in driver.page_source, "consent page")
    driver.find_element(By.CSS_SELECTOR, "button[value=allow]").click()
    wait.until(lambda d: d.find_element(By.ID, "out").text.strip() != "")
    text = driver.find_element(By.ID, "out").text
    check(not text.startswith("ERROR"), f"the app ran: {text}")
    result = json.loads(text)
    check(result["patient"] == "kp-1-0001", f"patient context: {result}")
    check(result["vitals"] and result["vitals"] > 0, "vital signs read with the token")
    check(result["user"].endswith("Patient/kp-1-0001"), "fhirUser from the id_token")
    check("patient/*.rs" in result["scope"], "granted scope")
    check(result["refreshed"], "refresh")
    check("code=" not in driver.current_url or "state=" in driver.current_url, "redirect carried state")
finally:
    driver.quit()
    server.shutdown()

print(f"fhirclient interop against {base}")
print(f"fhirclient: {passed} passed, 0 failed")
