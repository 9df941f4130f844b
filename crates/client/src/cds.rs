//! CDS Hooks 2.0 for services written with this crate: the discovery document, the request an EHR sends
//! (hook, context, prefetch), the cards a service answers with, and the check of the EHR's signed JWT
//! (`Authorization: Bearer`, RS384 or ES384, `aud` = the service's URL).

use crate::error::{Error, Result};
use crate::jose::b64url_decode;
use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One service in `GET {base}/cds-services`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// The hook it answers (`patient-view`, `order-select`, `order-sign`).
    pub hook: String,
    /// Its id: it is called at `{base}/cds-services/{id}`.
    pub id: String,
    /// Its name for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// What it does.
    pub description: String,
    /// Prefetch templates by key (`Patient/{{context.patientId}}`).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub prefetch: Map<String, Value>,
}

/// The discovery document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Discovery {
    /// Every service.
    pub services: Vec<Service>,
}

/// A hook call as a service receives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookRequest {
    /// The hook.
    pub hook: String,
    /// A UUID for this call.
    pub hook_instance: String,
    /// The EHR's FHIR base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fhir_server: Option<String>,
    /// An access token for the FHIR server, when the service asked for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fhir_authorization: Option<Value>,
    /// The hook's context (`userId`, `patientId`, `encounterId`, `draftOrders`…).
    pub context: Map<String, Value>,
    /// The prefetched resources, by the service's keys (a key may be `null`: nothing found or not allowed).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub prefetch: Map<String, Value>,
}

/// A link on a card.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Link {
    /// What people read.
    pub label: String,
    /// Where it goes: a web page (`absolute`) or a SMART app's launch URL (`smart`).
    pub url: String,
    /// `absolute` or `smart`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What the SMART app is handed in its token response (`appContext`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_context: Option<String>,
}

/// Where a card comes from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Source {
    /// The source's name for people.
    pub label: String,
    /// A page about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// A card.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Card {
    /// A UUID, for feedback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// One line, under 140 characters.
    pub summary: String,
    /// More, in GitHub-flavoured Markdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// `info`, `warning` or `critical`.
    pub indicator: String,
    /// Where it comes from.
    pub source: Source,
    /// Changes the service proposes to the orders being written (`order-select`, `order-sign`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suggestions: Vec<Suggestion>,
    /// How many suggestions may be accepted: `at-most-one` or `any` (required when there are suggestions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection_behavior: Option<String>,
    /// The reasons a clinician may give for not following the card.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub override_reasons: Vec<Coding>,
    /// Links to pages and apps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
}

/// A code, as CDS Hooks carries it (override reasons).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Coding {
    /// The code system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The code.
    pub code: String,
    /// What people read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

/// A change a card proposes; accepting it applies its actions to the draft orders.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Suggestion {
    /// What the button says.
    pub label: String,
    /// A UUID, for feedback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Whether the service recommends it above the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_recommended: Option<bool>,
    /// The changes, applied in order.
    #[serde(default)]
    pub actions: Vec<Action>,
}

/// One change to the draft orders.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Action {
    /// `create`, `update` or `delete`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What it does, for people.
    pub description: String,
    /// The resource to create, or the new version of one to update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<Value>,
    /// The resource to delete (`MedicationRequest/123`; a list of them is read too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<Value>,
}

/// `POST {service}/feedback`: what became of cards.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Feedback {
    /// One entry per card.
    pub feedback: Vec<FeedbackItem>,
}

/// What became of one card.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FeedbackItem {
    /// The card's `uuid`.
    pub card: String,
    /// `accepted` or `overridden`.
    pub outcome: String,
    /// The suggestions accepted (by their `uuid`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accepted_suggestions: Vec<AcceptedSuggestion>,
    /// Why the card was not followed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_reason: Option<OverrideReason>,
    /// When (an instant).
    pub outcome_timestamp: String,
}

/// An accepted suggestion, in feedback.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AcceptedSuggestion {
    /// The suggestion's `uuid`.
    pub id: String,
}

/// Why a card was overridden, in feedback.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OverrideReason {
    /// One of the card's `overrideReasons`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Coding>,
    /// What the clinician wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_comment: Option<String>,
}

/// A service's answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cards {
    /// The cards (none is a fine answer).
    pub cards: Vec<Card>,
}

/// Checks the JWT an EHR signs a hook call with: the RS384 or ES384 signature with the key its `kid` names
/// in `jwks` (the EHR's JWK Set), `iss` = `issuer` (the EHR this service trusts), `aud` = `service_url`
/// (this service's own URL: a token for another service is refused), `exp` not past (60 s skew) and at most
/// five minutes ahead, and a `jti`. Returns the claims; keeping `jti`s against replay is the caller's.
pub fn verify_request_jwt(jwt: &str, jwks: &Value, issuer: &str, service_url: &str, now: i64) -> Result<Value> {
    let bad = |m: &str| Error::CdsJwt(m.to_string());
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 {
        return Err(bad("not a compact JWS"));
    }
    let header: Value = b64url_decode(parts[0]).and_then(|b| serde_json::from_slice(&b).ok()).ok_or_else(|| bad("unreadable header"))?;
    let claims: Value = b64url_decode(parts[1]).and_then(|b| serde_json::from_slice(&b).ok()).ok_or_else(|| bad("unreadable claims"))?;
    let alg = header["alg"].as_str().unwrap_or_default();
    let kty = match alg {
        "RS384" => "RSA",
        "ES384" => "EC",
        _ => return Err(bad("alg must be RS384 or ES384")),
    };
    let key = jwks["keys"]
        .as_array()
        .and_then(|keys| {
            keys.iter().find(|k| k["kty"] == kty && header.get("kid").is_some() && k["kid"] == header["kid"] && (k.get("alg").is_none() || k["alg"] == alg))
        })
        .ok_or_else(|| bad("no key in the EHR's JWKS has the token's kid"))?;
    let sig = b64url_decode(parts[2]).ok_or_else(|| bad("bad signature encoding"))?;
    let input = format!("{}.{}", parts[0], parts[1]);
    let field = |name: &str| key[name].as_str().and_then(b64url_decode).ok_or_else(|| bad("bad key"));
    let verified = if kty == "RSA" {
        RsaPublicKeyComponents { n: &field("n")?, e: &field("e")? }.verify(&signature::RSA_PKCS1_2048_8192_SHA384, input.as_bytes(), &sig)
    } else {
        let mut point = vec![4u8];
        point.extend(field("x")?);
        point.extend(field("y")?);
        UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point).verify(input.as_bytes(), &sig)
    };
    verified.map_err(|_| bad("the signature does not verify"))?;
    if claims["iss"].as_str() != Some(issuer) {
        return Err(bad("iss is not the EHR this service trusts"));
    }
    let aud_ok = match &claims["aud"] {
        Value::String(a) => a == service_url,
        Value::Array(a) => a.iter().any(|x| x == service_url),
        _ => false,
    };
    if !aud_ok {
        return Err(bad("aud is not this service's URL"));
    }
    match claims["exp"].as_i64() {
        Some(exp) if exp + 60 >= now && exp <= now + 5 * 60 + 60 => {}
        Some(_) => return Err(bad("expired, or valid for longer than five minutes")),
        None => return Err(bad("no exp")),
    }
    if claims["jti"].as_str().is_none_or(str::is_empty) {
        return Err(bad("no jti"));
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::SigningKey;
    use serde_json::json;

    #[test]
    fn a_request_jwt_is_checked_for_signature_issuer_audience_and_time() {
        let key = SigningKey::generate_rs384("ehr-key");
        let jwks = json!({"keys": [key.public_jwk()]});
        let now = 1_800_000_000;
        let claims = |aud: &str, exp: i64| json!({"iss": "https://ehr.example/fhir", "aud": aud, "exp": exp, "iat": now, "jti": "j1"});
        let url = "https://cds.example/cds-services/bp";
        let ok = key.sign(&claims(url, now + 120)).unwrap();
        assert_eq!(verify_request_jwt(&ok, &jwks, "https://ehr.example/fhir", url, now).unwrap()["jti"], "j1");
        for (jwt, issuer, why) in [
            (key.sign(&claims("https://cds.example/cds-services/other", now + 120)).unwrap(), "https://ehr.example/fhir", "aud"),
            (key.sign(&claims(url, now - 120)).unwrap(), "https://ehr.example/fhir", "expired"),
            (key.sign(&claims(url, now + 3600)).unwrap(), "https://ehr.example/fhir", "five minutes"),
            (ok.clone(), "https://other-ehr.example/fhir", "iss"),
            (format!("{}x", &ok[..ok.len() - 2]), "https://ehr.example/fhir", "signature"),
        ] {
            let e = verify_request_jwt(&jwt, &jwks, issuer, url, now).unwrap_err().to_string();
            assert!(e.contains(why), "{why}: {e}");
        }
        let other = SigningKey::generate_rs384("ehr-key");
        assert!(verify_request_jwt(&other.sign(&claims(url, now + 120)).unwrap(), &jwks, "https://ehr.example/fhir", url, now).is_err(), "another key");
    }
}
