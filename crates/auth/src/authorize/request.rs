//! The authorisation request itself (RFC 6749 §4.1.1 with PKCE, RFC 7636, and SMART's `aud` and `launch`):
//! read once into an [`AuthorizeRequest`], checked, and remembered as a pending request for the pages
//! that follow. Once the app and its redirect URI are known, every refusal is a [`Refusal`], and
//! [`refuse`] alone decides where it goes.

use super::*;

use std::borrow::Cow;

pub async fn authorize_get(State(s): State<Shared>, headers: HeaderMap, Query(p): Query<Params>) -> Response {
    authorize(&s, &headers, AuthorizeRequest::from_params(&p)).await
}

pub async fn authorize_post(State(s): State<Shared>, headers: HeaderMap, Form(p): Form<Params>) -> Response {
    let mut req = AuthorizeRequest::from_params(&p);
    req.posted = true;
    authorize(&s, &headers, req).await
}

/// The parameters of an authorisation request; an empty value is an absent one. `Debug` is what the launch
/// inspector shows (no `state`, `nonce`, challenge or launch handle).
#[derive(Default, PartialEq, Eq)]
pub(crate) struct AuthorizeRequest {
    client_id: Option<String>,
    redirect_uri: Option<String>,
    response_type: Option<String>,
    state: Option<String>,
    scope: Option<String>,
    /// SMART's audience: this server's FHIR base.
    aud: Option<String>,
    /// RFC 8707's name for the same, accepted in its place.
    resource: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    nonce: Option<String>,
    /// The EHR's launch handle.
    launch: Option<String>,
    /// Sent with `POST` (SMART's `authorize-post`) rather than `GET`.
    posted: bool,
}

impl std::fmt::Debug for AuthorizeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuthorizeRequest {{ {} }}", self.described().replace('\n', ", "))
    }
}

impl AuthorizeRequest {
    pub(crate) fn from_params(p: &Params) -> AuthorizeRequest {
        let get = |k: &str| p.get(k).filter(|v| !v.is_empty()).cloned();
        AuthorizeRequest {
            client_id: get("client_id"),
            redirect_uri: get("redirect_uri"),
            response_type: get("response_type"),
            state: get("state"),
            scope: get("scope"),
            aud: get("aud"),
            resource: get("resource"),
            code_challenge: get("code_challenge"),
            code_challenge_method: get("code_challenge_method"),
            nonce: get("nonce"),
            launch: get("launch"),
            posted: false,
        }
    }

    /// The audience the app names: `aud`, or `resource` in its place.
    fn audience(&self) -> Option<&str> {
        self.aud.as_deref().or(self.resource.as_deref())
    }

    /// The request as the launch inspector shows it: values that must stay unguessable as their lengths,
    /// the launch handle not at all.
    fn described(&self) -> String {
        let len = |v: &Option<String>| v.as_ref().map(|v| format!("({} characters)", v.len()));
        [
            ("response_type", self.response_type.clone()),
            ("client_id", self.client_id.clone()),
            ("redirect_uri", self.redirect_uri.clone()),
            ("scope", self.scope.clone()),
            ("aud", self.aud.clone()),
            ("resource", self.resource.clone()),
            ("state", len(&self.state)),
            ("nonce", len(&self.nonce)),
            ("code_challenge", len(&self.code_challenge)),
            ("code_challenge_method", self.code_challenge_method.clone()),
            ("launch", self.launch.as_ref().map(|_| "(handle)".to_string())),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join("\n")
    }

    /// What the request alone decides, in the order a developer fixes it: the response type, PKCE
    /// (S256 only), the audience (one of this server's FHIR bases: which one the profile in force wants is
    /// checked once the launch is known), the scope, and a launch scope without a launch.
    /// The checked scope and code challenge.
    fn check(&self, fhir_bases: &[String]) -> Result<(&str, &str), Refusal> {
        if self.response_type.as_deref() != Some("code") {
            return Err(Refusal::new(ErrorCode::UnsupportedResponseType, "only response_type=code is supported"));
        }
        let Some(code_challenge) = self.code_challenge.as_deref() else {
            return Err(Refusal::new(ErrorCode::InvalidRequest, "PKCE is required: send code_challenge with code_challenge_method=S256"));
        };
        if self.code_challenge_method.as_deref() != Some("S256") {
            return Err(Refusal::new(ErrorCode::InvalidRequest, "code_challenge_method must be S256"));
        }
        match self.audience() {
            None => return Err(Refusal::new(ErrorCode::InvalidRequest, "aud must be this server's FHIR base URL").named("aud:missing")),
            Some(a) if !fhir_bases.iter().any(|b| a.trim_end_matches('/') == b) => {
                return Err(Refusal::new(ErrorCode::InvalidRequest, "aud must be this server's FHIR base URL").named("aud:invalid"));
            }
            Some(_) => {}
        }
        let Some(scope) = self.scope.as_deref() else {
            return Err(Refusal::new(ErrorCode::InvalidScope, "scope is required"));
        };
        if self.launch.is_none() && ScopeSet::parse(scope).contains(&Scope::Launch) {
            return Err(Refusal::new(ErrorCode::InvalidRequest, "the launch scope needs the launch parameter from the EHR"));
        }
        Ok((scope, code_challenge))
    }
}

/// Why a request whose app and redirect URI are known is refused: an RFC 6749 §4.1.2.1 code and a
/// description for the app's developer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(super) code: ErrorCode,
    pub(super) description: Cow<'static, str>,
    /// What went wrong, for a profile's `error_uri` (Oracle-style `launch:code-required`); the code when absent.
    pub(super) slug: Option<&'static str>,
}

impl Refusal {
    pub(super) fn new(code: ErrorCode, description: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal { code, description: description.into(), slug: None }
    }

    /// The same refusal, named `slug` in an `error_uri`.
    fn named(self, slug: &'static str) -> Refusal {
        Refusal { slug: Some(slug), ..self }
    }
}

/// Where a refusal goes. An app that registered itself may have registered any address as its redirect
/// URI: its refusals, made before anyone has signed in, are pages here, so that this endpoint is no open
/// redirector for it (RFC 9700 §4.11.2). Administrator-registered apps get RFC 6749 error redirects with
/// `state` and `iss`.
/// `profile` is the launch's when it is known, else the app's. The RFC 9207 `iss` is the issuer of the FHIR
/// base the app asked for (`aud`), as its discovery told it, when that is one of this server's bases.
#[allow(clippy::too_many_arguments)]
fn refuse(
    s: &Shared,
    client: &Client,
    profile: Option<&Profile>,
    aud: Option<&str>,
    trace: Option<&str>,
    redirect_uri: &str,
    state: Option<&str>,
    r: Refusal,
) -> Response {
    if client.self_registered {
        s.audit("authorize").launch(trace).client(client.client_id.as_str()).refused().record(format!("refused: {}: {}", r.code, r.description));
        error_page(s, StatusCode::BAD_REQUEST, "This app's request cannot be accepted", &r.description, "Tell the app's developer.")
    } else {
        let profile = profile.or(client.profile.as_ref());
        let issuer = aud
            .and_then(|a| s.config.profile_at(a.trim_end_matches('/')))
            .or_else(|| profile.cloned())
            .map_or_else(|| s.config.fhir_base.clone(), |p| s.config.issuer_for(&p));
        redirect_error(s, trace, redirect_uri, state, profile, &issuer, r)
    }
}

/// Why the launch of a request could not be taken.
enum LaunchStop {
    Refused(Refusal),
    Failed(store::StoreError),
}

/// The EHR launch the handle names, taken (single use) for this app: its context, with the faults it
/// asks for applied.
async fn take_launch(s: &Shared, handle: &str, client: &Client, requested: &ScopeSet) -> Result<LaunchContext, LaunchStop> {
    let refused = |code, description: &'static str| LaunchStop::Refused(Refusal::new(code, description));
    let record = match s.store.auth_consume("launch", &token_hash(handle)).await {
        Ok(Some(r)) if !r.used => r,
        Ok(Some(_)) => return Err(refused(ErrorCode::InvalidRequest, "this launch was already used; launch the app again from the EHR")),
        Ok(None) => return Err(refused(ErrorCode::InvalidRequest, "this launch has expired or is unknown; launch the app again from the EHR")),
        Err(e) => return Err(LaunchStop::Failed(e)),
    };
    let Ok(mut launch) = serde_json::from_str::<LaunchContext>(&record.value) else {
        return Err(refused(ErrorCode::InvalidRequest, "the launch could not be read"));
    };
    if launch.client_id.as_deref().is_some_and(|c| c != client.client_id) {
        return Err(refused(ErrorCode::InvalidRequest, "this launch was made for another app"));
    }
    if !requested.contains(&Scope::Launch) {
        return Err(refused(ErrorCode::InvalidScope, "an EHR launch must request the launch scope"));
    }
    if launch.faults.no_encounter {
        launch.encounter = None;
    }
    Ok(launch)
}

/// What the vendor profile refuses that SMART allows.
fn profile_rules(rules: &crate::profile::ProfileRules, req: &AuthorizeRequest, launched: bool, scopes: &ScopeSet) -> Result<(), Refusal> {
    if rules.aud_required() && req.aud.is_none() {
        return Err(Refusal::new(ErrorCode::InvalidRequest, "aud is required").named("aud:missing"));
    }
    if rules.post_only_with_launch() && req.posted && !launched {
        return Err(Refusal::new(ErrorCode::InvalidRequest, "this server accepts POST to the authorisation endpoint for EHR launches only; use GET"));
    }
    let user_scopes = scopes.scopes.iter().any(|sc| matches!(sc, Scope::Resource(r) if r.level == smart::Level::User));
    if rules.launch_required_for_user_scopes() && user_scopes && !launched {
        return Err(Refusal::new(ErrorCode::InvalidRequest, "a clinician's app (user/ scopes) must be launched from the EHR: this request has no launch")
            .named("grant:launch:code-required"));
    }
    Ok(())
}

/// The app, its redirect URI, then the request's own checks, the launch, and the vendor profile's rules;
/// then the pending request, and the first step for the person at the browser.
async fn authorize(s: &Shared, headers: &HeaderMap, req: AuthorizeRequest) -> Response {
    let Some(client_id) = req.client_id.as_deref() else {
        return error_page(
            s,
            StatusCode::BAD_REQUEST,
            "This app did not say who it is",
            "The request has no client_id.",
            "Tell the app's developer; the app must be registered and send its client id.",
        );
    };
    let client = match registry::get_client(s.store.as_ref(), client_id).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return error_page(
                s,
                StatusCode::BAD_REQUEST,
                "This app is not registered here",
                &format!("No app with the client id '{client_id}' is registered, or it has been disabled."),
                "Ask your administrator to register the app, or check the app's configuration.",
            );
        }
        Err(e) => return internal(s, e),
    };
    let Some(redirect_uri) = req.redirect_uri.as_deref().filter(|r| client.redirect_uris.iter().any(|u| u == r)) else {
        return error_page(
            s,
            StatusCode::BAD_REQUEST,
            "The app's return address is not registered",
            &format!("{} asked to be sent back to an address it has not registered, so the request was stopped.", client.name),
            "Tell the app's developer: the redirect_uri must match a registered one exactly.",
        );
    };
    let state = req.state.as_deref();
    // The launch this request belongs to, when it names one (even an expired one), for the inspector.
    let trace = match req.launch.as_deref() {
        Some(handle) => s.store.auth_get(crate::launch::LAUNCH_REF, &token_hash(handle)).await.ok().flatten().map(|r| r.value),
        None => None,
    };
    if trace.is_some() {
        s.audit("authorize-request").launch(trace.as_deref()).client(client.client_id.as_str()).record(req.described());
    }
    let trace = trace.as_deref();
    let (scope, code_challenge) = match req.check(&s.config.fhir_bases()) {
        Ok(checked) => checked,
        Err(r) => return refuse(s, &client, None, req.audience(), trace, redirect_uri, state, r),
    };
    let launch = match req.launch.as_deref() {
        Some(handle) => match take_launch(s, handle, &client, &ScopeSet::parse(scope)).await {
            Ok(l) => Some(l),
            Err(LaunchStop::Refused(r)) => return refuse(s, &client, None, req.audience(), trace, redirect_uri, state, r),
            Err(LaunchStop::Failed(e)) => return internal(s, e),
        },
        None => None,
    };
    let profile = launch.as_ref().and_then(|l| l.profile.clone()).or(client.profile.clone()).unwrap_or_default();
    if let Err(r) = profile_rules(s.config.profiles.rules(&profile), &req, launch.is_some(), &ScopeSet::parse(scope)) {
        return refuse(s, &client, Some(&profile), req.audience(), trace, redirect_uri, state, r);
    }
    // The EHR of the profile in force has one FHIR base (Epic's, Oracle's tenant path): the launch's `iss`.
    let base = s.config.fhir_base_for(&profile);
    if req.audience().is_some_and(|a| a.trim_end_matches('/') != base) {
        let r = Refusal::new(ErrorCode::InvalidRequest, format!("aud must be this EHR's FHIR base URL, {base} (the iss of its launches)")).named("aud:invalid");
        return refuse(s, &client, Some(&profile), req.audience(), trace, redirect_uri, state, r);
    }
    // The request belongs to this browser: its forms are accepted only with this browser's binding cookie.
    let (browser, set_cookie) = session::browser_binding(s, headers);
    let pending = PendingAuthorization {
        profile: Some(profile),
        client_id: client.client_id.clone(),
        redirect_uri: redirect_uri.to_string(),
        scope: scope.to_string(),
        state: req.state.clone(),
        code_challenge: code_challenge.to_string(),
        nonce: req.nonce.clone(),
        username: launch.as_ref().and_then(|l| l.username.clone()),
        patient: launch.as_ref().and_then(|l| l.patient.clone()),
        launch,
        browser,
        awaiting: Awaiting::SignIn,
    };
    let request_id = random_token();
    if let Err(e) = save_pending(s, &request_id, &pending).await {
        return internal(s, e);
    }
    // Who is at the browser: the session's user. An EHR launch names its user; only that user, signed in
    // here (the EHR's sign-in shares the session), may continue it — the handle alone is not enough.
    let signed_in = session::current(s, headers).await;
    let session = match (&pending.username, signed_in) {
        (Some(launcher), Some(session)) if *launcher != session.user.username => {
            return error_page(
                s,
                StatusCode::FORBIDDEN,
                "You are signed in as someone else",
                "This app was launched by another user than the one signed in to this browser.",
                "Sign out of the EHR, sign in as the user who launched the app, and launch it again from the patient's chart.",
            );
        }
        (_, session) => session,
    };
    let mut response = proceed(s, session, &request_id, pending, &client).await;
    if let Some(cookie) = set_cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "https://ehr.example/fhir";

    fn request(pairs: &[(&str, &str)]) -> AuthorizeRequest {
        AuthorizeRequest::from_params(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    fn valid() -> Vec<(&'static str, &'static str)> {
        vec![
            ("response_type", "code"),
            ("client_id", "app"),
            ("redirect_uri", "https://app.example/cb"),
            ("scope", "openid fhirUser patient/*.rs"),
            ("aud", BASE),
            ("state", "s1"),
            ("code_challenge", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"),
            ("code_challenge_method", "S256"),
        ]
    }

    /// A parameter set to a value (or, empty, left out).
    type Change = (&'static str, &'static str);

    fn with(changes: &[Change]) -> AuthorizeRequest {
        let mut pairs = valid();
        for (k, v) in changes {
            pairs.retain(|(n, _)| n != k);
            pairs.push((k, v));
        }
        request(&pairs)
    }

    #[test]
    fn a_request_is_read_once_with_empty_values_absent_and_resource_standing_for_aud() {
        let r = request(&[("client_id", "app"), ("state", ""), ("resource", BASE)]);
        assert_eq!(r.client_id.as_deref(), Some("app"));
        assert_eq!(r.state, None);
        assert_eq!(r.audience(), Some(BASE));
        assert_eq!(r.aud, None, "a vendor that requires aud by name can tell");
        assert_eq!(request(&[("aud", BASE), ("resource", "https://other.example")]).audience(), Some(BASE));
    }

    #[test]
    fn each_check_refuses_with_its_rfc_6749_code() {
        assert_eq!(with(&[]).check(&[BASE.to_string()]), Ok(("openid fhirUser patient/*.rs", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")));
        assert!(with(&[("aud", "https://ehr.example/fhir/")]).check(&[BASE.to_string()]).is_ok(), "a trailing slash is the same base");
        let cases: &[(&[Change], ErrorCode, &str)] = &[
            (&[("response_type", "token")], ErrorCode::UnsupportedResponseType, "only response_type=code is supported"),
            (&[("code_challenge", "")], ErrorCode::InvalidRequest, "PKCE is required: send code_challenge with code_challenge_method=S256"),
            (&[("code_challenge_method", "plain")], ErrorCode::InvalidRequest, "code_challenge_method must be S256"),
            (&[("aud", "https://elsewhere.example/fhir")], ErrorCode::InvalidRequest, "aud must be this server's FHIR base URL"),
            (&[("aud", "")], ErrorCode::InvalidRequest, "aud must be this server's FHIR base URL"),
            (&[("scope", "")], ErrorCode::InvalidScope, "scope is required"),
            (&[("scope", "launch patient/*.rs")], ErrorCode::InvalidRequest, "the launch scope needs the launch parameter from the EHR"),
        ];
        for (changes, code, description) in cases {
            let request = with(changes);
            let refused = request.check(&[BASE.to_string()]).map_err(|r| (r.code, r.description.to_string()));
            assert_eq!(refused, Err((*code, description.to_string())), "{changes:?}");
        }
        // With a launch, the launch scope is expected (checked against the launch itself later).
        assert!(with(&[("scope", "launch patient/*.rs"), ("launch", "handle")]).check(&[BASE.to_string()]).is_ok());
    }

    #[test]
    fn the_inspector_never_sees_the_values_that_must_stay_secret() {
        let shown = with(&[("launch", "the-handle"), ("nonce", "n0nce")]).described();
        assert!(shown.contains("client_id=app") && shown.contains("scope=openid fhirUser patient/*.rs"), "{shown}");
        assert!(shown.contains("state=(2 characters)") && shown.contains("nonce=(5 characters)") && shown.contains("launch=(handle)"), "{shown}");
        assert!(!shown.contains("the-handle") && !shown.contains("n0nce") && !shown.contains("E9Melhoa"), "{shown}");
        let debug = format!("{:?}", with(&[("launch", "the-handle"), ("nonce", "n0nce")]));
        assert!(debug.contains("client_id=app") && !debug.contains("the-handle") && !debug.contains("n0nce") && !debug.contains("E9Melhoa"), "{debug}");
    }
}
