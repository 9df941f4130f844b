//! A token-endpoint request, parsed once from the form (RFC 6749 §3.2, §4.1.3, §4.4.2, §6; RFC 7523):
//! how the client authenticates, and what it asks for. Everything after works on these types.

use crate::OAuthError;
use crate::launch::basic_credentials;
use axum::http::{HeaderMap, header};

/// A form body's pairs: UTF-8, each parameter at most once.
pub(crate) struct Form(Vec<(String, String)>);

/// The most parameters a token, introspection or revocation request may carry (they need about ten).
const MAX_PARAMS: usize = 64;

/// A secret's length, never its value, for `Debug`.
fn redacted(s: &str) -> String {
    format!("<{} characters>", s.len())
}

/// A form body's pairs; `None` when it is not UTF-8 (percent-decoded values included).
pub(crate) fn form_pairs(body: &[u8]) -> Option<Vec<(String, String)>> {
    std::str::from_utf8(body).ok()?;
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    // Decoding replaces invalid UTF-8 with U+FFFD: refuse rather than act on an altered value.
    if pairs.iter().any(|(k, v)| k.contains('\u{FFFD}') || v.contains('\u{FFFD}')) {
        return None;
    }
    Some(pairs)
}

impl Form {
    /// The body of a request to a form endpoint. RFC 6749 §3.2: parameters must not be repeated; a repeated
    /// one is refused rather than one of its values picked.
    pub(crate) fn parse(body: &[u8]) -> Result<Form, OAuthError> {
        let pairs = form_pairs(body).ok_or_else(|| OAuthError::invalid_request("the body must be application/x-www-form-urlencoded UTF-8 text"))?;
        // No OAuth request needs more; a body of many thousand parameters is refused before any work.
        if pairs.len() > MAX_PARAMS {
            return Err(OAuthError::invalid_request(format!("a request to this endpoint has at most {MAX_PARAMS} parameters")));
        }
        let mut seen = std::collections::HashSet::with_capacity(pairs.len());
        if let Some((k, _)) = pairs.iter().find(|(k, _)| !seen.insert(k.as_str())) {
            return Err(OAuthError::invalid_request(format!("the parameter {k} is repeated")));
        }
        Ok(Form(pairs))
    }

    pub(crate) fn take(&mut self, k: &str) -> Option<String> {
        let i = self.0.iter().position(|(n, _)| n == k)?;
        Some(self.0.swap_remove(i).1)
    }

    fn require(&mut self, k: &'static str) -> Result<String, OAuthError> {
        self.take(k).ok_or_else(|| OAuthError::invalid_request(format!("{k} is required")))
    }
}

/// How the client says who it is (RFC 6749 §2.3). `Debug` shows no secret.
#[derive(PartialEq, Eq)]
pub(crate) enum Credentials {
    /// Nothing: no `Authorization` header, no `client_id`, no assertion. Only a public client's refresh may
    /// come like this (RFC 6749 §6; the SMART JavaScript client sends none): its refresh token names it.
    Anonymous,
    /// An `Authorization` header that is not HTTP Basic, and no `client_id`.
    Unreadable,
    /// `client_id` alone: a public client.
    ClientId(String),
    /// HTTP Basic, or `client_id` with `client_secret` in the body.
    Secret { client_id: String, secret: String },
    /// `private_key_jwt` (RFC 7523 §2.2). `assertion_type` is checked by the authentication, so that a
    /// wrong one is an `invalid_client` error like the others.
    Assertion { assertion_type: Option<String>, assertion: String, client_id: Option<String> },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Unreadable => f.write_str("Unreadable"),
            Credentials::ClientId(id) => f.debug_tuple("ClientId").field(id).finish(),
            Credentials::Secret { client_id, secret } => f.debug_struct("Secret").field("client_id", client_id).field("secret", &redacted(secret)).finish(),
            Credentials::Assertion { assertion_type, assertion, client_id } => f
                .debug_struct("Assertion")
                .field("assertion_type", assertion_type)
                .field("assertion", &redacted(assertion))
                .field("client_id", client_id)
                .finish(),
        }
    }
}

impl Credentials {
    /// The client's credentials from the headers and the form: an assertion first, then HTTP Basic, then
    /// the body's `client_id` (with `client_secret`).
    pub(crate) fn parse(headers: &HeaderMap, form: &mut Form) -> Credentials {
        let assertion_type = form.take("client_assertion_type");
        let assertion = form.take("client_assertion");
        let client_id = form.take("client_id");
        let secret = form.take("client_secret");
        if assertion.is_some() || assertion_type.is_some() {
            return Credentials::Assertion { assertion_type, assertion: assertion.unwrap_or_default(), client_id };
        }
        if let Some((client_id, secret)) = basic_credentials(headers) {
            return Credentials::Secret { client_id, secret };
        }
        match (client_id, secret) {
            (Some(client_id), Some(secret)) => Credentials::Secret { client_id, secret },
            (Some(client_id), None) => Credentials::ClientId(client_id),
            (None, _) if headers.contains_key(header::AUTHORIZATION) => Credentials::Unreadable,
            (None, _) => Credentials::Anonymous,
        }
    }
}

/// What the client asks for. `Debug` shows no code, verifier or refresh token.
#[derive(PartialEq, Eq)]
pub(crate) enum GrantRequest {
    AuthorizationCode {
        code: String,
        redirect_uri: Option<String>,
        code_verifier: String,
    },
    /// `scope`, when given, may only narrow what was granted.
    RefreshToken {
        refresh_token: String,
        scope: Option<String>,
    },
    /// Backend services.
    ClientCredentials {
        scope: String,
    },
}

impl std::fmt::Debug for GrantRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GrantRequest::AuthorizationCode { code, redirect_uri, code_verifier } => f
                .debug_struct("AuthorizationCode")
                .field("code", &redacted(code))
                .field("redirect_uri", redirect_uri)
                .field("code_verifier", &redacted(code_verifier))
                .finish(),
            GrantRequest::RefreshToken { refresh_token, scope } => {
                f.debug_struct("RefreshToken").field("refresh_token", &redacted(refresh_token)).field("scope", scope).finish()
            }
            GrantRequest::ClientCredentials { scope } => f.debug_struct("ClientCredentials").field("scope", scope).finish(),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TokenRequest {
    pub credentials: Credentials,
    pub grant: GrantRequest,
}

impl TokenRequest {
    pub(crate) fn parse(headers: &HeaderMap, mut form: Form) -> Result<TokenRequest, OAuthError> {
        let grant_type = form.take("grant_type");
        let grant = match grant_type.as_deref() {
            Some("authorization_code") => GrantRequest::AuthorizationCode {
                code: form.require("code")?,
                redirect_uri: form.take("redirect_uri"),
                code_verifier: form.take("code_verifier").unwrap_or_default(),
            },
            Some("refresh_token") => GrantRequest::RefreshToken { refresh_token: form.require("refresh_token")?, scope: form.take("scope") },
            Some("client_credentials") => GrantRequest::ClientCredentials { scope: form.take("scope").unwrap_or_default() },
            _ => {
                return Err(OAuthError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    crate::ErrorCode::UnsupportedGrantType,
                    "grant_type must be authorization_code, refresh_token or client_credentials",
                ));
            }
        };
        Ok(TokenRequest { credentials: Credentials::parse(headers, &mut form), grant })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn parse(body: &str, authorization: Option<&str>) -> Result<TokenRequest, OAuthError> {
        let mut headers = HeaderMap::new();
        if let Some(a) = authorization {
            headers.insert(header::AUTHORIZATION, a.parse().unwrap());
        }
        TokenRequest::parse(&headers, Form::parse(body.as_bytes())?)
    }

    fn basic(id: &str, secret: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}")))
    }

    fn code() -> GrantRequest {
        GrantRequest::AuthorizationCode { code: "c".into(), redirect_uri: Some("https://app/cb".into()), code_verifier: "v".into() }
    }

    #[test]
    fn each_grant_type_carries_its_own_parameters() {
        let r = parse("grant_type=authorization_code&code=c&redirect_uri=https%3A%2F%2Fapp%2Fcb&code_verifier=v&client_id=app", None).unwrap();
        assert_eq!(r, TokenRequest { credentials: Credentials::ClientId("app".into()), grant: code() });
        let r = parse("grant_type=refresh_token&refresh_token=rt&scope=patient%2F*.rs", None).unwrap();
        assert_eq!(r.grant, GrantRequest::RefreshToken { refresh_token: "rt".into(), scope: Some("patient/*.rs".into()) });
        assert_eq!(r.credentials, Credentials::Anonymous);
        let r = parse("grant_type=client_credentials&scope=system%2FPatient.rs&client_assertion_type=t&client_assertion=jwt", None).unwrap();
        assert_eq!(r.grant, GrantRequest::ClientCredentials { scope: "system/Patient.rs".into() });
        assert_eq!(r.credentials, Credentials::Assertion { assertion_type: Some("t".into()), assertion: "jwt".into(), client_id: None });
    }

    #[test]
    fn what_is_missing_or_unknown_is_refused_with_the_right_code() {
        for (body, code, description) in [
            ("grant_type=password&username=a&password=b", "unsupported_grant_type", "grant_type must be"),
            ("code=c", "unsupported_grant_type", "grant_type must be"),
            ("grant_type=authorization_code&code_verifier=v", "invalid_request", "code is required"),
            ("grant_type=refresh_token", "invalid_request", "refresh_token is required"),
            ("grant_type=authorization_code&code=a&code=b", "invalid_request", "code is repeated"),
            ("grant_type=refresh_token&grant_type=client_credentials&refresh_token=r", "invalid_request", "grant_type is repeated"),
            ("grant_type=refresh_token&refresh_token=%FF", "invalid_request", "x-www-form-urlencoded"),
        ] {
            let e = parse(body, None).unwrap_err();
            assert_eq!((e.code().as_str(), e.status().as_u16()), (code, 400), "{body}");
            assert!(e.description().contains(description), "{body}: {}", e.description());
        }
    }

    #[test]
    fn a_body_of_many_parameters_is_refused_before_any_work() {
        // Found on review: the repeat check compared every pair with every earlier one (quadratic in a
        // 2 MB body of distinct keys, before any client authentication).
        let many: String = (0..200_000).map(|i| format!("k{i}=")).collect::<Vec<_>>().join("&");
        let e = Form::parse(many.as_bytes()).err().expect("refused");
        assert_eq!(e.code().as_str(), "invalid_request");
        assert!(e.description().contains("at most 64 parameters"), "{}", e.description());
        let at_limit: String = (0..MAX_PARAMS).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join("&");
        assert!(Form::parse(at_limit.as_bytes()).is_ok());
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let r = parse("grant_type=authorization_code&code=the-code&code_verifier=the-verifier&client_id=app&client_secret=the-secret", None).unwrap();
        let shown = format!("{r:?}");
        assert!(shown.contains("app") && shown.contains("<10 characters>"), "{shown}");
        for secret in ["the-code", "the-verifier", "the-secret"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        let r = parse("grant_type=refresh_token&refresh_token=the-refresh-token&client_assertion=the.jwt.value", None).unwrap();
        let shown = format!("{r:?}");
        assert!(!shown.contains("the-refresh-token") && !shown.contains("the.jwt.value"), "{shown}");
    }

    #[test]
    fn credentials_are_read_in_order_assertion_basic_body() {
        let q = "grant_type=authorization_code&code=c&redirect_uri=https%3A%2F%2Fapp%2Fcb&code_verifier=v";
        let creds = |extra: &str, auth: Option<&str>| parse(&format!("{q}{extra}"), auth).unwrap().credentials;
        assert_eq!(creds("", Some(&basic("app", "s3cret"))), Credentials::Secret { client_id: "app".into(), secret: "s3cret".into() });
        // Basic wins over the body's client_id; percent-encoded Basic credentials are decoded (RFC 6749 §2.3.1).
        assert_eq!(
            creds("&client_id=other&client_secret=x", Some(&basic("my%20app", "a%3Ab"))),
            Credentials::Secret { client_id: "my app".into(), secret: "a:b".into() }
        );
        assert_eq!(creds("&client_id=app&client_secret=s", None), Credentials::Secret { client_id: "app".into(), secret: "s".into() });
        assert_eq!(
            creds("&client_assertion=jwt&client_id=app", Some(&basic("app", "s"))),
            Credentials::Assertion { assertion_type: None, assertion: "jwt".into(), client_id: Some("app".into()) }
        );
        assert_eq!(creds("", Some("Bearer abc")), Credentials::Unreadable);
        assert_eq!(creds("", None), Credentials::Anonymous);
        // A secret without a client id identifies no one.
        assert_eq!(creds("&client_secret=s", None), Credentials::Anonymous);
    }
}
