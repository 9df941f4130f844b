//! The EHR's page models (askama templates in `templates/`). Askama escapes every value.

use crate::chart::{Chart, PatientFacts};
use askama::Template;
use auth::model::{Client, ClientKind, Profile, UserRole};
use auth::session::Session;
use std::collections::HashMap;

/// The header: who is signed in, where "home" is, and the CSRF token for the sign-out form.
pub struct Nav {
    pub user: Option<String>,
    pub clinician: bool,
    /// An administrator: the nav offers Apps and Users.
    pub admin: bool,
    pub csrf: String,
    pub area: &'static str,
    pub home: &'static str,
}

impl Nav {
    pub fn of(s: &Session) -> Nav {
        let clinician = s.user.role == UserRole::Clinician;
        Nav {
            user: Some(s.user.display_name.clone()),
            clinician,
            admin: clinician && s.user.admin,
            csrf: s.csrf.clone(),
            area: if clinician { "EHR" } else { "patient portal" },
            home: if clinician { "/ehr/patients" } else { "/portal" },
        }
    }

    pub fn anonymous() -> Nav {
        Nav { user: None, clinician: false, admin: false, csrf: String::new(), area: "EHR", home: "/ehr" }
    }
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub nav: Nav,
    pub heading: &'static str,
    pub action: &'static str,
    pub hint: &'static str,
    pub error: Option<String>,
}

impl LoginPage {
    pub fn clinician(error: Option<&str>) -> LoginPage {
        LoginPage {
            nav: Nav::anonymous(),
            heading: "Sign in to the EHR",
            action: "/ehr/login",
            hint: "Sandbox clinician: clinician / kindling-clinician (also nurse / kindling-nurse and frontdesk / kindling-frontdesk, who may let apps do less). Patients use the patient portal (/portal).",
            error: error.map(str::to_string),
        }
    }

    pub fn portal(error: Option<&str>) -> LoginPage {
        let mut nav = Nav::anonymous();
        nav.area = "patient portal";
        nav.home = "/portal";
        LoginPage {
            nav,
            heading: "Sign in to your patient portal",
            action: "/portal/login",
            hint: "Sandbox patient: patient / kindling-patient.",
            error: error.map(str::to_string),
        }
    }
}

#[derive(Template)]
#[template(path = "message.html")]
pub struct MessagePage {
    pub nav: Nav,
    pub heading: String,
    pub explanation: String,
    pub action: String,
    pub back: String,
}

pub struct PatientQuery {
    pub name: String,
    pub birthdate: String,
    pub identifier: String,
}

#[derive(Template)]
#[template(path = "patients.html")]
pub struct PatientsPage {
    pub nav: Nav,
    pub q: PatientQuery,
    pub patients: Vec<PatientFacts>,
    pub total: usize,
    pub first: usize,
    pub last: usize,
    pub prev: Option<String>,
    pub next: Option<String>,
    pub error: Option<String>,
}

pub struct AppView {
    pub client_id: String,
    pub name: String,
    pub icon: Option<String>,
}

#[derive(Template)]
#[template(path = "chart.html")]
pub struct ChartPage {
    pub nav: Nav,
    pub chart: Chart,
    pub apps: Vec<AppView>,
    pub profiles: Vec<(String, String)>,
    pub embed: Option<String>,
    pub embed_name: String,
}

#[derive(Template)]
#[template(path = "portal.html")]
pub struct PortalPage {
    pub nav: Nav,
    pub patient: PatientFacts,
    pub apps: Vec<AppView>,
    pub profiles: Vec<(String, String)>,
}

pub struct LaunchRow {
    pub id: String,
    pub when: String,
    pub app: String,
    pub patient: String,
}

#[derive(Template)]
#[template(path = "launches.html")]
pub struct LaunchesPage {
    pub nav: Nav,
    pub launches: Vec<LaunchRow>,
}

pub struct ConnectedRow {
    pub client_id: String,
    pub name: String,
    pub may: Vec<String>,
    pub authorised: String,
    pub status: String,
}

#[derive(Template)]
#[template(path = "connected.html")]
pub struct ConnectedPage {
    pub nav: Nav,
    pub apps: Vec<ConnectedRow>,
    /// The app just withdrawn, for the confirmation line.
    pub withdrawn: Option<String>,
}

pub struct Step {
    pub title: String,
    pub when: String,
    pub offset: String,
    pub ok: bool,
    pub detail: String,
    pub hint: String,
}

/// One audit record of a launch as a step of the handshake, with a hint where an app commonly goes wrong.
pub fn step(r: &store::audit::AuditRecord, start: i64, when: String) -> Step {
    let ok = r.outcome == "0";
    let detail = r.detail.clone().unwrap_or_default();
    let (title, hint) = match (r.category.as_str(), r.action.as_str()) {
        ("auth", "launch") => ("Launch context created by the EHR".to_string(), String::new()),
        ("auth", "cds-hook") => ("Decision-support service called (CDS Hooks patient-view) and answered with a card".to_string(), String::new()),
        ("auth", "cds-launch") => (
            "The clinician opened the card's app link (SMART launch with the card's appContext)".to_string(),
            "The app finds appContext in its token response.".into(),
        ),
        ("auth", "authorize-request") => ("The app asked for authorisation".to_string(), String::new()),
        ("auth", "authorize") => (
            "Authorisation refused".to_string(),
            if detail.contains("expired") {
                "The app used the launch after it expired or a second time: launch handles are single use and short lived.".into()
            } else {
                String::new()
            },
        ),
        ("auth", "consent") if ok => ("Consent".to_string(), String::new()),
        ("auth", "consent") => {
            ("The user denied access".to_string(), "The app was sent error=access_denied; it should explain what it cannot do without access.".into())
        }
        ("auth", "code") => ("Authorisation code issued and sent to the app's redirect URI".to_string(), String::new()),
        ("auth", "token") => ("Token exchange".to_string(), String::new()),
        ("auth", "refresh") if ok => ("Token refreshed".to_string(), String::new()),
        ("auth", "refresh") => ("Refresh refused".to_string(), "The app must stop using this session and ask the user to relaunch from the chart.".into()),
        ("auth", "revoke") => ("Tokens revoked".to_string(), String::new()),
        ("auth", "code-replay") => ("A used code came back".to_string(), "The app exchanged the same code twice; the tokens it produced were revoked.".into()),
        ("auth", "refresh-reuse") => {
            ("A rotated-out refresh token came back".to_string(), "The app must store the new refresh token from every refresh response.".into())
        }
        ("rest", action) => {
            let status = detail.split(' ').nth(1).unwrap_or("");
            let hint = match status {
                "401" => "The token was refused (expired or revoked): refresh it, or ask the user to relaunch.",
                "403" => "The token does not grant this: check the granted scopes before calling.",
                "429" | "503" => "The server asked the app to retry later (Retry-After): back off and retry.",
                _ => "",
            };
            (format!("FHIR {action} {}", r.entity.as_deref().unwrap_or("")), hint.to_string())
        }
        (_, action) => (action.to_string(), String::new()),
    };
    let offset_ms = r.recorded - start;
    Step { title, when, offset: if offset_ms > 0 { format!("{:.3} s", offset_ms as f64 / 1000.0) } else { String::new() }, ok, detail, hint }
}

#[derive(Template)]
#[template(path = "inspector.html")]
pub struct InspectorPage {
    pub nav: Nav,
    pub id: String,
    pub steps: Vec<Step>,
}

pub struct AppRow {
    pub client_id: String,
    pub name: String,
    pub kind: &'static str,
    pub disabled: bool,
}

#[derive(Template)]
#[template(path = "apps.html")]
pub struct AppsPage {
    pub nav: Nav,
    pub apps: Vec<AppRow>,
}

/// The registration form's fields, as typed.
#[derive(Default, Clone)]
pub struct AppForm {
    pub client_id: String,
    pub name: String,
    pub kind: String,
    pub launch_url: String,
    pub redirect_uris: String,
    pub scope: String,
    pub jwks_url: String,
    pub icon: String,
    pub profile: String,
    pub disabled: bool,
}

const DEFAULT_SCOPE: &str = "launch launch/patient launch/encounter openid fhirUser offline_access patient/*.rs user/*.rs";

impl AppForm {
    pub fn from_params(p: &HashMap<String, String>) -> AppForm {
        let get = |k: &str| p.get(k).map(|v| v.trim().to_string()).unwrap_or_default();
        AppForm {
            client_id: String::new(),
            name: get("name"),
            kind: get("kind"),
            launch_url: get("launch_url"),
            redirect_uris: get("redirect_uris"),
            scope: get("scope"),
            jwks_url: get("jwks_url"),
            icon: get("icon"),
            profile: get("profile"),
            disabled: false,
        }
    }

    pub fn from_client(c: &Client) -> AppForm {
        AppForm {
            client_id: c.client_id.clone(),
            name: c.name.clone(),
            kind: crate::kind_str(c.kind).to_string(),
            launch_url: c.launch_url.clone().unwrap_or_default(),
            redirect_uris: c.redirect_uris.join("\n"),
            scope: c.allowed_scope.clone(),
            jwks_url: c.jwks_url.clone().unwrap_or_default(),
            icon: c.icon.clone().unwrap_or_default(),
            profile: c.profile.clone().unwrap_or_default().as_str().to_string(),
            disabled: c.disabled,
        }
    }

    /// The registration this form describes (keeping an existing one's secret and keys); checked.
    pub fn to_client(&self, existing: Option<&Client>, profiles: &auth::profile::Profiles) -> Result<Client, String> {
        let kind = match self.kind.as_str() {
            "public" | "" => ClientKind::Public,
            "confidential-symmetric" => ClientKind::ConfidentialSymmetric,
            "confidential-asymmetric" => ClientKind::ConfidentialAsymmetric,
            _ => return Err("Choose a client type.".into()),
        };
        let opt = |v: &str| (!v.is_empty()).then(|| v.to_string());
        if let Some(u) = opt(&self.launch_url)
            && url::Url::parse(&u).is_err()
        {
            return Err("The launch URL must be an absolute URL.".into());
        }
        let profile = match self.profile.as_str() {
            "" | "strict" => None,
            name if profiles.get(name).is_some() => Some(Profile::named(name)),
            _ => return Err("Choose an EHR behaviour from the list.".into()),
        };
        let client = Client {
            client_id: self.client_id.clone(),
            name: self.name.clone(),
            kind,
            secret_hash: existing.and_then(|e| e.secret_hash.clone()),
            redirect_uris: self.redirect_uris.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect(),
            launch_url: opt(&self.launch_url),
            allowed_scope: if self.scope.is_empty() { DEFAULT_SCOPE.to_string() } else { self.scope.split_whitespace().collect::<Vec<_>>().join(" ") },
            jwks: existing.and_then(|e| e.jwks.clone()),
            jwks_url: opt(&self.jwks_url),
            icon: opt(&self.icon),
            disabled: self.disabled,
            profile,
            // Saved by an administrator on the Apps page: reviewed, so no longer a self-registered app.
            self_registered: false,
        };
        auth::apps::validate(&client)?;
        Ok(client)
    }
}

#[derive(Template)]
#[template(path = "app_form.html")]
pub struct AppFormPage {
    pub nav: Nav,
    pub heading: String,
    pub action: String,
    pub form: AppForm,
    pub editing: bool,
    pub created: bool,
    pub secret: Option<String>,
    pub error: Option<String>,
    pub kinds: Vec<(&'static str, &'static str)>,
    pub profiles: Vec<(String, String)>,
}

impl AppFormPage {
    fn base(nav: Nav, heading: String, action: String, mut form: AppForm, error: Option<String>) -> AppFormPage {
        if form.scope.is_empty() {
            form.scope = DEFAULT_SCOPE.to_string();
        }
        AppFormPage {
            nav,
            heading,
            action,
            form,
            editing: false,
            created: false,
            secret: None,
            error,
            kinds: vec![
                ("public", "Public (browser or native app, no secret)"),
                ("confidential-symmetric", "Confidential, client secret"),
                ("confidential-asymmetric", "Confidential, private key JWT"),
            ],
            profiles: Vec::new(),
        }
    }

    /// The page offering these vendor profiles.
    pub fn offering(mut self, profiles: Vec<(String, String)>) -> AppFormPage {
        self.profiles = profiles;
        self
    }

    pub fn new_app(nav: Nav, form: AppForm, error: Option<String>) -> AppFormPage {
        AppFormPage::base(nav, "Register an app".into(), "/ehr/apps".into(), form, error)
    }

    pub fn created(nav: Nav, form: AppForm, secret: Option<String>) -> AppFormPage {
        let id = form.client_id.clone();
        let mut p = AppFormPage::base(nav, format!("{} is registered", form.name), format!("/ehr/apps/{id}"), form, None);
        p.editing = true;
        p.created = true;
        p.secret = secret;
        p
    }

    pub fn edit(nav: Nav, form: AppForm, error: Option<String>) -> AppFormPage {
        let id = form.client_id.clone();
        let mut p = AppFormPage::base(nav, format!("Edit {}", form.name), format!("/ehr/apps/{id}"), form, error);
        p.editing = true;
        p
    }
}
