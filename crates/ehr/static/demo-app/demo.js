// Kindling demo app: a public SMART on FHIR client in plain JavaScript (PKCE S256, state, EHR and
// standalone launch, refresh, retries on 429/503). It keeps its token in this tab's sessionStorage only,
// so several tabs with several patients never mix. Messages speak to clinicians, not in OAuth codes.
"use strict";
const Demo = (() => {
  const CLIENT_ID = "kindling-demo";
  const EHR_SCOPE = "launch openid fhirUser offline_access patient/*.rs";
  const STANDALONE_SCOPE = "launch/patient openid fhirUser offline_access patient/*.rs";
  const $ = (id) => document.getElementById(id);
  const b64url = (bytes) => btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  const random = (n) => b64url(crypto.getRandomValues(new Uint8Array(n)));
  const status = (text, bad) => { const s = $("status"); s.textContent = text; s.className = bad ? "error" : ""; };

  async function launch() {
    const q = new URLSearchParams(location.search);
    const iss = q.get("iss");
    const handle = q.get("launch");
    if (!iss) return status("Open this app from a patient's chart in the EHR.", true);
    // This demo only talks to the EHR that serves it; an unknown iss is refused, never followed.
    if (new URL(iss).origin !== location.origin) return status("This app was opened by an unknown EHR and will not connect to it.", true);
    let conf;
    try {
      conf = await (await fetch(iss + "/.well-known/smart-configuration")).json();
    } catch (e) {
      return status("The EHR could not be reached. Try launching the app again.", true);
    }
    const verifier = random(32);
    const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
    const state = random(16);
    const redirect = location.origin + "/demo-app/index.html";
    sessionStorage.setItem("demo:pending:" + state, JSON.stringify({ iss, verifier, token: conf.token_endpoint, redirect }));
    const p = new URLSearchParams({
      response_type: "code", client_id: CLIENT_ID, redirect_uri: redirect, scope: handle ? EHR_SCOPE : STANDALONE_SCOPE,
      state, aud: iss, code_challenge: b64url(new Uint8Array(digest)), code_challenge_method: "S256",
    });
    if (handle) p.set("launch", handle);
    location.assign(conf.authorization_endpoint + "?" + p.toString());
  }

  // What a clinician is told for each way an authorisation can end badly.
  function explainError(code, description) {
    const d = description || "";
    if (code === "access_denied") return "Access to the record was not allowed, so this app cannot show anything. Relaunch the app from the patient's chart to choose again.";
    if (/expired|already used|unknown/.test(d)) return "This launch has expired. Relaunch the app from the patient's chart.";
    return "The EHR did not let this app in. Relaunch the app from the patient's chart; if it keeps happening, tell your administrator.";
  }

  async function callback() {
    const q = new URLSearchParams(location.search);
    history.replaceState(null, "", location.pathname); // the code and state leave the address bar
    if (q.get("error")) {
      $("status").dataset.error = q.get("error");
      return status(explainError(q.get("error"), q.get("error_description")), true);
    }
    const state = q.get("state");
    const saved = state && sessionStorage.getItem("demo:pending:" + state);
    if (!saved) {
      const session = sessionStorage.getItem("demo:session");
      if (session) return show(JSON.parse(session));
      return status("This page was opened without a launch. Launch the app from a patient's chart.", true);
    }
    sessionStorage.removeItem("demo:pending:" + state);
    const pending = JSON.parse(saved);
    const r = await fetch(pending.token, {
      method: "POST", headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ grant_type: "authorization_code", code: q.get("code"), redirect_uri: pending.redirect, client_id: CLIENT_ID, code_verifier: pending.verifier }),
    });
    const body = await r.json();
    if (!r.ok) return status(explainError(body.error, body.error_description), true);
    const session = { iss: pending.iss, token_endpoint: pending.token, tokens: body, received: Date.now() };
    sessionStorage.setItem("demo:session", JSON.stringify(session));
    show(session);
  }

  const STANDARD = ["access_token", "token_type", "expires_in", "scope", "refresh_token", "id_token", "patient", "encounter", "need_patient_banner", "smart_style_url", "fhirContext", "intent", "tenant"];

  function show(session) {
    const t = session.tokens;
    $("app").hidden = false;
    const ctx = $("context");
    ctx.replaceChildren();
    const row = (k, v, id) => {
      const dt = document.createElement("dt"); dt.textContent = k;
      const dd = document.createElement("dd"); dd.textContent = v; if (id) dd.id = id;
      ctx.append(dt, dd);
    };
    row("Patient", t.patient || "none", "ctx-patient");
    row("Encounter", t.encounter || "none (no encounter context)", "ctx-encounter");
    row("Granted scopes", t.scope || "", "ctx-scope");
    row("Access token lifetime", t.expires_in === undefined ? "not given" : t.expires_in + " s", "ctx-expires");
    row("Refresh token", t.refresh_token ? "yes" : "no", "ctx-refresh");
    row("need_patient_banner", JSON.stringify(t.need_patient_banner), "ctx-banner");
    const extra = Object.keys(t).filter((k) => !STANDARD.includes(k));
    row("Other fields", extra.length ? extra.map((k) => k + " = " + JSON.stringify(t[k])).join(", ") : "none", "ctx-extra");
    $("reload").onclick = () => load(session);
    $("refresh").onclick = () => refresh(session);
    load(session);
  }

  // A FHIR GET with the token; retries once after Retry-After on 429/503.
  async function fhir(session, path) {
    const url = session.iss + "/" + path;
    if (!url.startsWith(session.iss + "/")) throw new Error("refusing to send the token outside the FHIR base");
    for (let attempt = 0; ; attempt++) {
      const r = await fetch(url, { headers: { authorization: "Bearer " + session.tokens.access_token, accept: "application/fhir+json" } });
      if ((r.status === 429 || r.status === 503) && attempt === 0) {
        const wait = Math.min(5, parseInt(r.headers.get("retry-after") || "1", 10) || 1);
        await new Promise((ok) => setTimeout(ok, wait * 1000));
        continue;
      }
      return { status: r.status, body: r.ok ? await r.json() : null, retried: attempt > 0 };
    }
  }

  function sectionMessage(status) {
    if (status === 401) return "Your access has ended. Relaunch the app from the patient's chart.";
    if (status === 403) return "This app was not given access to this part of the record.";
    if (status === 429 || status === 503) return "The record system is busy; this part could not be loaded. Try again shortly.";
    return "This part of the record could not be loaded.";
  }

  async function load(session) {
    const t = session.tokens;
    status("Loading…");
    const sections = $("sections");
    sections.replaceChildren();
    if (!t.patient) { status("No patient was chosen for this launch.", true); return; }
    const asked = [
      ["patient", "Patient/" + encodeURIComponent(t.patient)],
      ["conditions", "Condition?patient=" + encodeURIComponent(t.patient)],
      ["vitals", "Observation?patient=" + encodeURIComponent(t.patient) + "&category=vital-signs&_count=5&_sort=-date"],
    ];
    const results = await Promise.all(asked.map(([, p]) => fhir(session, p)));
    let failures = 0;
    results.forEach((res, i) => {
      const [name] = asked[i];
      const p = document.createElement("p");
      p.id = "section-" + name;
      p.dataset.status = res.status;
      if (res.status !== 200) {
        failures++;
        p.className = "error";
        p.textContent = name + ": " + sectionMessage(res.status) + " (FHIR answered " + res.status + ")";
      } else if (name === "patient") {
        const n = (res.body.name || [])[0] || {};
        const full = [...(n.given || []), n.family || ""].join(" ").trim();
        $("patient-name").textContent = full;
        $("patient-born").textContent = "born " + (res.body.birthDate || "unknown");
        const banner = t.need_patient_banner === true || t.need_patient_banner === "true";
        $("banner").hidden = !banner;
        p.textContent = "Patient: " + full + (res.retried ? " (after a retry)" : "");
        p.dataset.name = full;
      } else {
        const n = res.body.total !== undefined ? res.body.total : (res.body.entry || []).length;
        p.textContent = name + ": " + n + " found" + (res.retried ? " (after a retry)" : "");
      }
      sections.append(p);
    });
    status(failures ? "Some parts of the record could not be loaded." : "Ready.", failures > 0);
  }

  async function refresh(session) {
    const out = $("refresh-result");
    if (!session.tokens.refresh_token) { out.textContent = "This launch has no refresh token."; return; }
    const r = await fetch(session.token_endpoint, {
      method: "POST", headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ grant_type: "refresh_token", refresh_token: session.tokens.refresh_token, client_id: CLIENT_ID }),
    });
    const body = await r.json();
    if (!r.ok) {
      out.className = "error";
      out.dataset.error = body.error || "";
      out.textContent = "Your session could not be renewed. Relaunch the app from the patient's chart.";
      return;
    }
    // Keep the old refresh token when the server sends none (no rotation).
    body.refresh_token = body.refresh_token || session.tokens.refresh_token;
    session.tokens = Object.assign({}, session.tokens, body);
    sessionStorage.setItem("demo:session", JSON.stringify(session));
    out.className = "";
    out.dataset.error = "";
    out.textContent = "Access renewed for " + body.expires_in + " s.";
  }

  return { launch, callback };
})();
