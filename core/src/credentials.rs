//! Credentials as callers present them, checked without I/O: the bearer token of an
//! `Authorization` header, the shape and digest of an API key (`auth = api_key`), and JWT
//! verification with configured keys (`auth = jwt`; no network fetch). The component decides
//! which mode is on and what a caller may do (`auth.rs`).

use crate::user::{MAX_USER_ID_CHARS, UserId};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::{Map, Value};

/// Seconds of clock skew allowed on `exp` and `nbf`.
const LEEWAY_S: u64 = 30;
/// API keys: `tk_<key id>_<secret>`, the id 16 and the secret 64 lowercase hex characters.
const KEY_PREFIX: &str = "tk_";
pub const KEY_ID_LEN: usize = 16;
const KEY_SECRET_LEN: usize = 64;

/// The token of an `Authorization` header's value, `Bearer <token>` (RFC 6750 §2.1; the
/// scheme is case-insensitive), or `None` for another shape.
pub fn bearer_token(value: &str) -> Option<&str> {
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
            Some(token.trim())
        }
        _ => None,
    }
}

/// A key as its caller sends it, from its id and secret (`new_api_key` draws both).
pub fn api_key_text(key_id: &str, secret: &str) -> String {
    format!("{KEY_PREFIX}{key_id}_{secret}")
}

/// The parts of a presented API key.
#[derive(Debug, PartialEq, Eq)]
pub struct PresentedKey<'a> {
    pub key_id: &'a str,
}

/// A string of the shape of our keys, `tk_<16 hex>_<64 hex>`.
pub fn parse_api_key(token: &str) -> Option<PresentedKey<'_>> {
    let rest = token.strip_prefix(KEY_PREFIX)?;
    let (key_id, secret) = rest.split_once('_')?;
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (hex(key_id, KEY_ID_LEN) && hex(secret, KEY_SECRET_LEN)).then_some(PresentedKey { key_id })
}

/// Whether `s` has the shape of a key id we generate (checked before it goes into a key).
pub fn is_key_id(s: &str) -> bool {
    s.len() == KEY_ID_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// What Redis keeps of a key: the SHA-256 of its whole text, lowercase hex. The secret is
/// 256 random bits, so a fast hash is enough: there is nothing to guess by brute force.
pub fn key_digest(key: &str) -> Vec<u8> {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.as_bytes());
    digest.iter().flat_map(|b| format!("{b:02x}").into_bytes()).collect()
}

/// What `auth = jwt` is configured with (the `jwt_*` variables, as set).
pub struct JwtSettings<'a> {
    pub hs256_secret: &'a str,
    pub public_keys: &'a str,
    pub issuer: &'a str,
    pub audience: &'a str,
    pub user_claim: &'a str,
}

/// Verifies tokens with the configured keys. Each key has one algorithm, and a token is
/// checked only with keys of the algorithm its header names: `alg: none` names none, and a
/// token "signed" with an RSA public key as an HMAC secret finds no HS256 key to confuse.
pub struct JwtVerifier {
    keys: Vec<VerifyKey>,
    issuer: Option<String>,
    audience: Option<String>,
    user_claim: String,
}

struct VerifyKey {
    algorithm: Algorithm,
    kid: Option<String>,
    key: DecodingKey,
}

impl JwtVerifier {
    pub fn new(settings: &JwtSettings) -> Result<JwtVerifier, String> {
        let mut keys = Vec::new();
        if !settings.hs256_secret.is_empty() {
            // RFC 7518 §3.2: an HS256 key must have at least the hash's 256 bits.
            if settings.hs256_secret.len() < 32 {
                return Err("jwt_hs256_secret must be at least 32 bytes".to_string());
            }
            let key = DecodingKey::from_secret(settings.hs256_secret.as_bytes())
                .map_err(|e| format!("jwt_hs256_secret: {e}"))?;
            keys.push(VerifyKey { algorithm: Algorithm::HS256, kid: None, key });
        }
        let public = settings.public_keys.trim();
        if public.starts_with('{') {
            keys.extend(jwks_keys(public)?);
        } else if !public.is_empty() {
            keys.extend(pem_keys(public)?);
        }
        if keys.is_empty() {
            return Err("set jwt_hs256_secret or jwt_public_keys".to_string());
        }
        let user_claim = match settings.user_claim.trim() {
            "" => "sub".to_string(),
            claim => claim.to_string(),
        };
        let set = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        Ok(JwtVerifier { keys, issuer: set(settings.issuer), audience: set(settings.audience), user_claim })
    }

    /// The user a token names, or why it is refused (in words that never repeat it).
    pub fn verify(&self, token: &str) -> Result<UserId, String> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| "the token is not a signed JWT with an algorithm this API accepts".to_string())?;
        let candidates: Vec<&VerifyKey> = self
            .keys
            .iter()
            .filter(|k| k.algorithm == header.alg)
            .filter(|k| match (&k.kid, &header.kid) {
                (Some(ours), Some(theirs)) => ours == theirs,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(format!("tokens signed with {:?} (or with that key id) are not accepted", header.alg));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_S;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_aud = self.audience.is_some();
        if let Some(audience) = &self.audience {
            validation.set_audience(&[audience]);
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        let mut why = String::new();
        for candidate in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &candidate.key, &validation) {
                Ok(data) => return self.user(&data.claims),
                Err(e) => why = refusal_reason(e.kind()),
            }
        }
        Err(why)
    }

    fn user(&self, claims: &Map<String, Value>) -> Result<UserId, String> {
        let claim = &self.user_claim;
        let user = match claims.get(claim) {
            Some(Value::String(user)) => user.clone(),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
            _ => return Err(format!("the token has no string claim {claim:?} naming its user")),
        };
        UserId::parse(user)
            .map_err(|_| format!("the token's {claim:?} claim must be 1 to {MAX_USER_ID_CHARS} characters"))
    }
}

fn refusal_reason(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired".to_string(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_string(),
        ErrorKind::InvalidSignature => "the token's signature does not verify".to_string(),
        ErrorKind::InvalidAudience => "the token is not for this audience (aud)".to_string(),
        ErrorKind::InvalidIssuer => "the token is not from the expected issuer (iss)".to_string(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no {claim:?} claim"),
        ErrorKind::InvalidClaimFormat(claim) => format!("the token's {claim:?} claim is malformed"),
        ErrorKind::InvalidAlgorithm => "the token's algorithm does not match its key".to_string(),
        _ => "the token is malformed".to_string(),
    }
}

/// RS256 or ES256 keys from a JWKS document (RFC 7517 §5), each with its `kid` if it has one.
fn jwks_keys(text: &str) -> Result<Vec<VerifyKey>, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("jwt_public_keys is not a JWKS document: {e}"))?;
    set.keys
        .iter()
        .enumerate()
        .map(|(i, jwk)| {
            let algorithm = match (&jwk.common.key_algorithm, &jwk.algorithm) {
                (Some(KeyAlgorithm::RS256), AlgorithmParameters::RSA(_)) | (None, AlgorithmParameters::RSA(_)) => {
                    Algorithm::RS256
                }
                (Some(KeyAlgorithm::ES256), AlgorithmParameters::EllipticCurve(ec))
                | (None, AlgorithmParameters::EllipticCurve(ec))
                    if ec.curve == EllipticCurve::P256 =>
                {
                    Algorithm::ES256
                }
                _ => {
                    return Err(format!("jwt_public_keys: key {i} is neither an RS256 RSA key nor an ES256 P-256 key"));
                }
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("jwt_public_keys: key {i}: {e}"))?;
            Ok(VerifyKey { algorithm, kid: jwk.common.key_id.clone(), key })
        })
        .collect()
}

/// RS256 or ES256 keys from PEM public keys, one block after another.
fn pem_keys(text: &str) -> Result<Vec<VerifyKey>, String> {
    const END: &str = "-----END PUBLIC KEY-----";
    let mut keys = Vec::new();
    let mut rest = text;
    while let Some(end) = rest.find(END) {
        let block = rest[..end + END.len()].trim();
        rest = &rest[end + END.len()..];
        let n = keys.len();
        let key = if let Ok(key) = DecodingKey::from_rsa_pem(block.as_bytes()) {
            VerifyKey { algorithm: Algorithm::RS256, kid: None, key }
        } else if let Ok(key) = DecodingKey::from_ec_pem(block.as_bytes()) {
            VerifyKey { algorithm: Algorithm::ES256, kid: None, key }
        } else {
            return Err(format!("jwt_public_keys: PEM block {n} is neither an RSA nor a P-256 public key"));
        };
        keys.push(key);
    }
    if keys.is_empty() || !rest.trim().is_empty() {
        return Err(format!(
            "jwt_public_keys must be PEM public keys (-----BEGIN PUBLIC KEY----- ... {END}) or a JWKS document"
        ));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_shapes() {
        let key = format!("tk_{}_{}", "0123456789abcdef", "a".repeat(64));
        assert_eq!(parse_api_key(&key), Some(PresentedKey { key_id: "0123456789abcdef" }));
        for bad in [
            String::new(),
            "tk_".to_string(),
            key.replace("tk_", "tx_"),
            key.to_uppercase(),
            format!("{key}a"),
            format!("tk_0123456789abcde_{}", "a".repeat(65)),
            format!("tk_0123456789abcdef_{}", "g".repeat(64)),
            format!("tk_0123456789abcdef{}", "a".repeat(65)),
        ] {
            assert_eq!(parse_api_key(&bad), None, "{bad}");
        }
        assert!(is_key_id("0123456789abcdef") && !is_key_id("0123456789abcdeF") && !is_key_id("0123"));
        // FIPS 180-2 test vector, as hex.
        assert_eq!(key_digest("abc"), b"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".to_vec());
    }

    const RSA_PRIVATE: &str = include_str!("../../runtime-tests/fixtures/jwt/rsa-private.pem");
    const RSA_PUBLIC: &str = include_str!("../../runtime-tests/fixtures/jwt/rsa-public.pem");
    const EC_PRIVATE: &str = include_str!("../../runtime-tests/fixtures/jwt/ec-private.pem");
    const EC_PUBLIC: &str = include_str!("../../runtime-tests/fixtures/jwt/ec-public.pem");
    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn now() -> i64 {
        jsonwebtoken::get_current_timestamp() as i64
    }

    fn sign(alg: Algorithm, key: &jsonwebtoken::EncodingKey, claims: Value) -> String {
        jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, key).unwrap_or_else(|e| panic!("{e}"))
    }

    fn secret(bytes: &[u8]) -> jsonwebtoken::EncodingKey {
        jsonwebtoken::EncodingKey::from_secret(bytes).unwrap_or_else(|e| panic!("{e}"))
    }

    fn hs256(claims: Value) -> String {
        sign(Algorithm::HS256, &secret(SECRET.as_bytes()), claims)
    }

    fn verifier(hs256_secret: &str, public_keys: &str, issuer: &str, audience: &str) -> JwtVerifier {
        let settings = JwtSettings { hs256_secret, public_keys, issuer, audience, user_claim: "" };
        JwtVerifier::new(&settings).unwrap_or_else(|e| panic!("{e}"))
    }

    fn refused(verifier: &JwtVerifier, token: &str, says: &str) {
        match verifier.verify(token) {
            Err(why) => {
                assert!(why.contains(says), "{why:?} should say {says:?}");
                assert!(token.is_empty() || !why.contains(token), "the reason repeats the token");
            }
            Ok(user) => panic!("accepted as {user:?}, should be refused for {says:?}"),
        }
    }

    #[test]
    fn hs256_tokens_are_checked_in_full() {
        use serde_json::json;
        let v = verifier(SECRET, "", "https://issuer.example", "task-api");
        let good = json!({"sub": "alice", "exp": now() + 60, "iss": "https://issuer.example", "aud": "task-api"});
        assert_eq!(v.verify(&hs256(good.clone())).map(UserId::into_string), Ok("alice".to_string()));
        let with = |field: &str, value: Value| {
            let mut claims = good.clone();
            claims[field] = value;
            hs256(claims)
        };
        refused(&v, &with("exp", json!(now() - 120)), "expired");
        refused(&v, &with("nbf", json!(now() + 120)), "not valid yet");
        refused(&v, &with("aud", json!("another-api")), "audience");
        refused(&v, &with("iss", json!("https://elsewhere.example")), "issuer");
        refused(&v, &with("sub", json!(["alice"])), "malformed");
        refused(&v, &with("sub", json!(null)), "no string claim \"sub\"");
        refused(&v, &with("sub", json!("x".repeat(129))), "1 to 128 characters");
        let mut no_exp = good.clone();
        no_exp.as_object_mut().map(|c| c.remove("exp"));
        refused(&v, &hs256(no_exp), "\"exp\"");
        // Inside the leeway an expired token still passes (clocks drift).
        assert!(v.verify(&with("exp", json!(now() - 5))).is_ok());
        let b64 = |s: &str| base64url(s.as_bytes());
        // Another secret, or a changed payload, breaks the signature.
        let other = secret(b"another secret of thirty-two bytes!!");
        refused(&v, &sign(Algorithm::HS256, &other, good.clone()), "signature");
        let token = hs256(good.clone());
        let parts: Vec<&str> = token.split('.').collect();
        let mallory =
            b64(&json!({"sub": "mallory", "exp": now() + 60, "iss": "https://issuer.example", "aud": "task-api"})
                .to_string());
        refused(&v, &format!("{}.{mallory}.{}", parts[0], parts[2]), "signature");
        // `alg: none` and an unsigned token are not JWTs this API accepts.
        let none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&good.to_string()));
        refused(&v, &none, "algorithm this API accepts");
        refused(&v, "not.a.jwt", "algorithm this API accepts");
        refused(&v, "", "algorithm this API accepts");
    }

    fn base64url(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn rs256_and_es256_keys_from_pem_and_jwks() {
        use serde_json::json;
        let claims = json!({"sub": "bob", "exp": now() + 60});
        let rsa = jsonwebtoken::EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let ec = jsonwebtoken::EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let rs_token = sign(Algorithm::RS256, &rsa, claims.clone());
        let es_token = sign(Algorithm::ES256, &ec, claims.clone());
        let pem = verifier("", &format!("{RSA_PUBLIC}\n{EC_PUBLIC}"), "", "");
        assert_eq!(pem.verify(&rs_token).map(UserId::into_string), Ok("bob".to_string()));
        assert_eq!(pem.verify(&es_token).map(UserId::into_string), Ok("bob".to_string()));
        // Algorithm confusion: an HS256 token whose "secret" is the public key finds no key.
        let confused = sign(Algorithm::HS256, &secret(RSA_PUBLIC.as_bytes()), claims.clone());
        refused(&pem, &confused, "HS256");
        // With an HS256 secret configured too, the public key is still not that secret.
        let both = verifier(SECRET, RSA_PUBLIC, "", "");
        refused(&both, &confused, "signature");
        // Only RSA configured: an ES256 token is refused by its algorithm.
        refused(&verifier("", RSA_PUBLIC, "", ""), &es_token, "ES256");
        // A JWKS document, keys told apart by `kid`.
        let mut jwk =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&rsa, Algorithm::RS256).unwrap_or_else(|e| panic!("{e}"));
        jwk.common.key_id = Some("k1".to_string());
        let jwks = json!({"keys": [jwk]}).to_string();
        let v = verifier("", &jwks, "", "");
        let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
        header.kid = Some("k1".to_string());
        let with_kid = jsonwebtoken::encode(&header, &claims, &rsa).unwrap_or_default();
        assert_eq!(v.verify(&with_kid).map(UserId::into_string), Ok("bob".to_string()));
        assert_eq!(v.verify(&rs_token).map(UserId::into_string), Ok("bob".to_string()));
        header.kid = Some("k2".to_string());
        refused(&v, &jsonwebtoken::encode(&header, &claims, &rsa).unwrap_or_default(), "key id");
    }

    #[test]
    fn verifier_configuration_errors_name_the_variable() {
        let settings = |hs256_secret, public_keys| JwtSettings {
            hs256_secret,
            public_keys,
            issuer: "",
            audience: "",
            user_claim: "",
        };
        for (secret, keys, says) in [
            ("", "", "set jwt_hs256_secret or jwt_public_keys"),
            ("short", "", "at least 32 bytes"),
            ("", "{\"keys\": 5}", "not a JWKS document"),
            ("", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", "PEM block 0"),
            ("", "not a key", "must be PEM public keys"),
        ] {
            match JwtVerifier::new(&settings(secret, keys)) {
                Err(e) => assert!(e.contains(says), "{e}"),
                Ok(_) => panic!("{secret:?} {keys:?} accepted"),
            }
        }
        assert!(JwtVerifier::new(&settings(&"s".repeat(32), "")).is_ok());
    }
}
