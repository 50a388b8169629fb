//! The security schemes of the OpenAPI document and each route's requirement (what
//! [`super::Authority`] enforces; see docs/security.md).

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{OpenApi as Document, Ref, RefOr};
use utoipa::Modify;

/// Routes that need a credential (unless anonymous access is open): the data, `/v1/me` and
/// `/metrics`.
const PROTECTED: &[&str] = &[
    "/v1/poll",
    "/v1/series",
    "/v1/devices",
    "/v1/readings",
    "/v1/rollups",
    "/v1/rejects",
    "/v1/me",
    "/metrics",
];
/// Routes that answer `403` to an authenticated caller: a filter it may not read, or
/// `/metrics` without its grant (the live routes document theirs).
const FORBIDDEN: &[&str] = &["/v1/readings", "/v1/rollups", "/metrics"];
/// Routes for clients that cannot set headers (EventSource, WebSocket): protected too, and
/// they also take the `access_token` query parameter. (The hub accepts it on `/v1/poll` too,
/// whose clients use fetch and so the header; it is not advertised there.)
const LIVE: &[&str] = &[
    "/v1/stream",
    "/v1/ws",
    "/v1/watch",
    "/v1/sensors/{deviceId}/watch",
];

/// Adds the schemes (`bearer`, `cookie`, `queryToken`: the `access_token` parameter of the
/// live routes), each operation's `security` and its `401` answer.
#[derive(Debug)]
pub struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An app token (`ewt_...`, `edgewatch token create`) or a JWT (HS256, RS256, ES256).",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                super::sessions::COOKIE,
                "The session cookie `POST /v1/login` sets (HttpOnly, SameSite=Strict).",
            ))),
        );
        components.add_security_scheme(
            "queryToken",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "access_token",
                "A bearer token as a query parameter, on the live routes only (EventSource cannot set headers); redacted in logs.",
            ))),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            let live = LIVE.contains(&path.as_str());
            let protected = live || PROTECTED.contains(&path.as_str());
            let ops = [&mut item.get, &mut item.post]
                .into_iter()
                .filter_map(Option::as_mut);
            for op in ops {
                secure(op, protected, live);
                if FORBIDDEN.contains(&path.as_str()) {
                    op.responses
                        .responses
                        .entry("403".to_owned())
                        .or_insert_with(|| RefOr::Ref(Ref::from_response_name("Forbidden")));
                }
            }
        }
    }
}

/// One operation: public (`security: []`), or a credential from one of the schemes, or none
/// where the hub allows anonymous callers (`{}`: loopback without credentials configured, or
/// `auth.allow_anonymous`).
fn secure(op: &mut Operation, protected: bool, live: bool) {
    if !protected {
        op.security = Some(Vec::new());
        return;
    }
    let mut schemes = vec![
        SecurityRequirement::new("bearer", Vec::<String>::new()),
        SecurityRequirement::new("cookie", Vec::<String>::new()),
    ];
    if live {
        schemes.push(SecurityRequirement::new("queryToken", Vec::<String>::new()));
    }
    schemes.push(SecurityRequirement::default());
    op.security = Some(schemes);
    op.responses
        .responses
        .entry("401".to_owned())
        .or_insert_with(|| RefOr::Ref(Ref::from_response_name("Unauthorized")));
}
