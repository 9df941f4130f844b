//! SMART discovery: `{iss}/.well-known/smart-configuration`, tolerant of what real servers omit, with
//! relative endpoint URLs resolved against the document's own URL.

use crate::error::{Error, Result};
use serde::Deserialize;
use serde_json::Value;

/// A server's SMART configuration, as needed by a client.
#[derive(Debug, Clone)]
pub struct SmartConfiguration {
    /// The authorisation server's issuer (the `iss` of its id_tokens and RFC 9207 responses).
    pub issuer: Option<String>,
    /// Absolute URL of the authorisation endpoint.
    pub authorization_endpoint: String,
    /// Absolute URL of the token endpoint.
    pub token_endpoint: String,
    /// The issuer's JWKS, for id_token verification.
    pub jwks_uri: Option<String>,
    /// RFC 7009 revocation endpoint.
    pub revocation_endpoint: Option<String>,
    /// RFC 7662 introspection endpoint.
    pub introspection_endpoint: Option<String>,
    /// RFC 7591 dynamic registration endpoint.
    pub registration_endpoint: Option<String>,
    /// SMART capabilities (`launch-ehr`, `authorize-post`, ...).
    pub capabilities: Vec<String>,
    /// Scopes the server says it supports.
    pub scopes_supported: Vec<String>,
    /// PKCE methods (`S256` assumed when the server omits the field).
    pub code_challenge_methods_supported: Vec<String>,
    /// Client authentication methods at the token endpoint.
    pub token_endpoint_auth_methods_supported: Vec<String>,
    /// The whole document, for fields this type does not name.
    pub raw: Value,
}

#[derive(Deserialize)]
struct Doc {
    issuer: Option<String>,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    jwks_uri: Option<String>,
    revocation_endpoint: Option<String>,
    introspection_endpoint: Option<String>,
    registration_endpoint: Option<String>,
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default)]
    scopes_supported: Vec<String>,
    #[serde(default)]
    code_challenge_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Vec<String>,
}

impl SmartConfiguration {
    /// Reads a discovery document fetched from `doc_url`.
    pub fn parse(doc_url: &str, raw: Value) -> std::result::Result<SmartConfiguration, String> {
        let doc: Doc = serde_json::from_value(raw.clone()).map_err(|e| format!("not a SMART configuration: {e}"))?;
        let base = url::Url::parse(doc_url).map_err(|e| e.to_string())?;
        let resolve = |u: Option<String>| -> std::result::Result<Option<String>, String> {
            match u {
                None => Ok(None),
                Some(u) => base.join(&u).map(|x| Some(x.to_string())).map_err(|e| format!("bad endpoint URL {u}: {e}")),
            }
        };
        let authorization_endpoint = resolve(doc.authorization_endpoint)?.ok_or("no authorization_endpoint")?;
        let token_endpoint = resolve(doc.token_endpoint)?.ok_or("no token_endpoint")?;
        // A server that advertises no PKCE methods still gets S256: SMART 2 requires it of every server,
        // and some omit the field.
        let code_challenge_methods_supported = doc.code_challenge_methods_supported.unwrap_or_else(|| vec!["S256".into()]);
        if !code_challenge_methods_supported.iter().any(|m| m == "S256") {
            return Err("the server does not support PKCE S256".into());
        }
        Ok(SmartConfiguration {
            issuer: doc.issuer,
            authorization_endpoint,
            token_endpoint,
            jwks_uri: resolve(doc.jwks_uri)?,
            revocation_endpoint: resolve(doc.revocation_endpoint)?,
            introspection_endpoint: resolve(doc.introspection_endpoint)?,
            registration_endpoint: resolve(doc.registration_endpoint)?,
            capabilities: doc.capabilities,
            scopes_supported: doc.scopes_supported,
            code_challenge_methods_supported,
            token_endpoint_auth_methods_supported: doc.token_endpoint_auth_methods_supported,
            raw,
        })
    }

    /// Whether the server advertises a SMART capability.
    pub fn supports(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }

    /// Fetches `{iss}/.well-known/smart-configuration`.
    pub async fn fetch(http: &reqwest::Client, iss: &str) -> Result<SmartConfiguration> {
        let url = format!("{}/.well-known/smart-configuration", iss.trim_end_matches('/'));
        let err = |detail: String| Error::Discovery { iss: iss.to_string(), detail };
        let r = http.get(&url).header("accept", "application/json").send().await.map_err(|e| err(e.without_url().to_string()))?;
        if !r.status().is_success() {
            return Err(err(format!("{url} answered {}", r.status())));
        }
        let raw: Value = r.json().await.map_err(|e| err(format!("not JSON: {}", e.without_url())))?;
        SmartConfiguration::parse(&url, raw).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn relative_endpoints_resolve_and_missing_fields_are_tolerated() {
        let c = SmartConfiguration::parse(
            "https://ehr.example/fhir/r4/.well-known/smart-configuration",
            json!({"authorization_endpoint": "/oauth/authorize", "token_endpoint": "../../token", "capabilities": ["launch-ehr"]}),
        )
        .unwrap();
        assert_eq!(c.authorization_endpoint, "https://ehr.example/oauth/authorize");
        assert_eq!(c.token_endpoint, "https://ehr.example/fhir/token");
        assert_eq!(c.code_challenge_methods_supported, vec!["S256"], "PKCE assumed when the field is missing");
        assert!(c.supports("launch-ehr") && !c.supports("authorize-post"));
        assert!(c.jwks_uri.is_none());
    }

    #[test]
    fn refuses_a_server_without_s256_or_endpoints() {
        assert!(
            SmartConfiguration::parse(
                "https://x/.well-known/smart-configuration",
                json!({"authorization_endpoint": "a", "token_endpoint": "t", "code_challenge_methods_supported": ["plain"]})
            )
            .is_err()
        );
        assert!(SmartConfiguration::parse("https://x/.well-known/smart-configuration", json!({"token_endpoint": "t"})).is_err());
    }
}
