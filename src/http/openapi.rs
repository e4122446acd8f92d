//! `GET /api/v1/openapi.json`: `src/openapi.json`, which holds for any deployment, fitted to
//! this one, so that a generated client or a fuzzer sees what this deployment accepts:
//!
//! - kinds and tiers: an `enum` of the configured ones (`Kind` and `Tier`, which every kind
//!   and tier in the document refers to, and `PulledKind`, the kinds workers pull); without
//!   a pulled kind, the workers' routes (`POST /api/v1/claims` and `…/outcome`) are left out,
//!   as they can only answer 400 here;
//! - who may call: only the security scheme of the `auth` variable (none, `userToken` for
//!   `jwt`, `apiKey` for `api_key`), and the admin token where it is set; a task's `user_id`
//!   is required with `auth = none`, where nothing else names the user.

use super::answer::text_response;
use crate::auth::Auth;
use crate::config::Config;
use crate::problem::{HttpResponse, Problem};
use serde_json::{Value, json};

const DOCUMENT: &str = include_str!("../openapi.json");

/// Who may call an operation, as the static document marks it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Guard {
    /// Acts for a user: their credentials or the admin's (`userToken`/`apiKey`/`adminToken`).
    User,
    /// The admin token only.
    Admin,
}

pub fn serve(config: &Config, auth: &Auth) -> Result<HttpResponse, Problem> {
    let mut doc: Value =
        serde_json::from_str(DOCUMENT).map_err(|e| Problem::internal(format!("the OpenAPI document: {e}")))?;
    fit(&mut doc, config, auth);
    Ok(text_response(doc.to_string(), "application/json"))
}

fn fit(doc: &mut Value, config: &Config, auth: &Auth) {
    let schemas = &mut doc["components"]["schemas"];
    schemas["Kind"]["enum"] = json!(config.policies.kinds().collect::<Vec<_>>());
    // An empty `enum` when no tier is configured: only `null` (the built-in tier) is valid.
    schemas["Tier"]["enum"] = json!(config.policies.tiers().collect::<Vec<_>>());
    let pulled = config.policies.pulled_kinds();
    if pulled.is_empty() {
        if let Some(paths) = doc["paths"].as_object_mut() {
            paths.remove("/api/v1/claims");
            paths.remove("/api/v1/task/{task_id}/outcome");
        }
        // No worker key can be made either.
        let schemas = &mut doc["components"]["schemas"];
        schemas["ApiKeyRequest"] = json!({"$ref": "#/components/schemas/UserKeyRequest"});
        if let Some(schemas) = schemas.as_object_mut() {
            schemas.remove("WorkerKeyRequest");
        }
    } else {
        doc["components"]["schemas"]["PulledKind"]["enum"] = json!(pulled);
    }
    let schemas = &mut doc["components"]["schemas"];
    for name in ["Kind", "Tier", "PulledKind"] {
        if let Some(schema) = schemas[name].as_object_mut() {
            schema.remove("pattern");
        }
    }
    if matches!(auth, Auth::None) {
        schemas["TaskRequest"]["required"] = json!(["user_id"]);
    }

    let user_scheme = match auth {
        Auth::None => None,
        Auth::Jwt(_) => Some("userToken"),
        Auth::ApiKey => Some("apiKey"),
    };
    let admin = config.admin_token.as_ref().map(|_| json!({"adminToken": []}));
    let operations = doc["paths"].as_object_mut().into_iter().flat_map(|paths| paths.values_mut());
    for operation in operations.flat_map(|path| path.as_object_mut().into_iter().flat_map(|ops| ops.values_mut())) {
        let Some(operation) = operation.as_object_mut() else { continue };
        let guard = match operation.get("security").map(Value::to_string) {
            Some(security) if security.contains("userToken") => Guard::User,
            Some(security) if security.contains("adminToken") => Guard::Admin,
            _ => continue,
        };
        // With `auth = none`, a user's state is the admin's to read (`users::state`); the
        // task routes are open.
        let is_get_user = operation.get("operationId").and_then(Value::as_str) == Some("getUser");
        let requirements: Vec<Value> = match (guard, user_scheme) {
            (Guard::User, Some(scheme)) => [Some(json!({scheme: []})), admin.clone()].into_iter().flatten().collect(),
            (Guard::User, None) if !is_get_user => Vec::new(),
            _ => admin.clone().into_iter().collect(),
        };
        if requirements.is_empty() {
            operation.remove("security");
        } else {
            operation.insert("security".to_string(), Value::Array(requirements));
        }
    }
    if let Some(components) = doc["components"].as_object_mut() {
        let used = |name: &str| (name == "adminToken" && admin.is_some()) || Some(name) == user_scheme;
        if let Some(Value::Object(schemes)) = components.get_mut("securitySchemes") {
            schemes.retain(|name, _| used(name));
            if schemes.is_empty() {
                components.remove("securitySchemes");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Policies, Policy};

    fn document(auth: &Auth, admin_token: Option<&str>) -> Value {
        let json = r#"{"kinds": {"email": ["5/60s"]}, "tiers": {"pro": {"email": ["50/60s"]}, "team": {}}}"#;
        let policies = Policies::parse(json, Policy::legacy(1, 20)).unwrap_or_else(|e| panic!("{e}"));
        let config = Config::for_tests(policies, admin_token.map(str::to_string));
        let mut doc: Value = serde_json::from_str(DOCUMENT).unwrap_or_else(|e| panic!("{e}"));
        fit(&mut doc, &config, auth);
        doc
    }

    fn security(doc: &Value, path: &str, method: &str) -> Value {
        doc["paths"][path][method].get("security").cloned().unwrap_or(Value::Null)
    }

    #[test]
    fn kinds_and_tiers_are_the_configured_ones() {
        let doc = document(&Auth::None, None);
        assert_eq!(doc["components"]["schemas"]["Kind"]["enum"], json!(["default", "email"]));
        // No kind is pulled: no workers' routes.
        assert!(
            doc["paths"].get("/api/v1/claims").is_none()
                && doc["paths"].get("/api/v1/task/{task_id}/outcome").is_none()
        );
        assert_eq!(doc["components"]["schemas"]["Tier"]["enum"], json!(["pro", "team"]));
        assert_eq!(doc["components"]["schemas"]["TaskRequest"]["required"], json!(["user_id"]));
    }

    #[test]
    fn a_pulled_kind_brings_the_workers_routes() {
        let json = r#"{"kinds": {"render": {"windows": ["1/1s"], "pull": true}, "email": ["5/60s"]}}"#;
        let policies = Policies::parse(json, Policy::legacy(1, 20)).unwrap_or_else(|e| panic!("{e}"));
        let config = Config::for_tests(policies, Some("t".to_string()));
        let mut doc: Value = serde_json::from_str(DOCUMENT).unwrap_or_else(|e| panic!("{e}"));
        fit(&mut doc, &config, &Auth::ApiKey);
        assert_eq!(doc["components"]["schemas"]["PulledKind"]["enum"], json!(["render"]));
        assert!(doc["components"]["schemas"]["PulledKind"].get("pattern").is_none());
        for path in ["/api/v1/claims", "/api/v1/task/{task_id}/outcome"] {
            assert_eq!(security(&doc, path, "post"), json!([{"apiKey": []}, {"adminToken": []}]), "{path}");
        }
    }

    #[test]
    fn security_follows_auth_and_the_admin_token() {
        let open = document(&Auth::None, None);
        assert!(open["components"].get("securitySchemes").is_none());
        for (path, method) in [("/api/v1/task", "post"), ("/api/v1/users/{user_id}", "get"), ("/metrics", "get")] {
            assert_eq!(security(&open, path, method), Value::Null, "{method} {path}");
        }

        let admin = document(&Auth::None, Some("t"));
        assert_eq!(admin["components"]["securitySchemes"].as_object().map(|s| s.len()), Some(1));
        assert_eq!(security(&admin, "/api/v1/task", "post"), Value::Null);
        assert_eq!(security(&admin, "/api/v1/users/{user_id}", "get"), json!([{"adminToken": []}]));
        assert_eq!(security(&admin, "/api/v1/keys", "post"), json!([{"adminToken": []}]));

        let keys = document(&Auth::ApiKey, Some("t"));
        let schemes: Vec<&String> =
            keys["components"]["securitySchemes"].as_object().into_iter().flatten().map(|s| s.0).collect();
        assert_eq!(schemes, ["adminToken", "apiKey"]);
        for (path, method) in
            [("/api/v1/task", "post"), ("/api/v1/task/{task_id}", "delete"), ("/api/v1/users/{user_id}", "get")]
        {
            assert_eq!(security(&keys, path, method), json!([{"apiKey": []}, {"adminToken": []}]), "{method} {path}");
        }
        assert_eq!(security(&keys, "/api/v1/users/{user_id}/tier", "put"), json!([{"adminToken": []}]));
        assert_eq!(security(&keys, "/healthz", "get"), Value::Null);
        assert!(keys["components"]["schemas"]["TaskRequest"].get("required").is_none());
    }
}
