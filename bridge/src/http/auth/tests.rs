use super::*;
use axum::http::Request;

fn parts(headers: &[(&str, &str)], uri: &str) -> Parts {
    let mut req = Request::builder().uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(()).unwrap().into_parts().0
}

fn f(s: &str) -> TopicFilter {
    TopicFilter::parse(s).unwrap()
}

fn with_token(read: &[&str]) -> (Authority, String) {
    let (token, hash) = tokens::generate();
    let cfg = AuthConfig {
        tokens: vec![TokenConfig {
            name: "app".into(),
            hash,
            read: read.iter().map(|s| (*s).to_owned()).collect(),
            publish: vec![],
            metrics: false,
        }],
        ..AuthConfig::default()
    };
    let auth = Authority::new(&cfg, &["sensors/#".into()], &[], None).unwrap();
    (auth, token)
}

#[test]
fn without_credentials_configured_everyone_is_the_local_anonymous() {
    let auth = Authority::open(&["sensors/#".into()], &[]);
    assert!(!auth.has_credentials() && auth.allows_anonymous());
    let caller = auth.resolve(&parts(&[], "/v1/series"), false).unwrap();
    assert_eq!(caller.0.kind, PrincipalKind::Anonymous);
    assert!(caller.may_read(&f("sensors/+/t")) && !caller.may_read(&f("#")));
    assert!(auth.may_read_metrics(&caller.0));
}

#[test]
fn with_a_token_configured_a_caller_needs_it() {
    let (auth, token) = with_token(&["sensors/d1/#"]);
    assert!(auth.has_credentials() && !auth.allows_anonymous());
    let err = auth.resolve(&parts(&[], "/v1/series"), false).unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let bearer = format!("Bearer {token}");
    let caller = auth
        .resolve(&parts(&[("authorization", &bearer)], "/"), false)
        .unwrap();
    assert_eq!(
        (caller.0.name.as_str(), caller.0.kind),
        ("app", PrincipalKind::Token)
    );
    assert!(caller.may_read(&f("sensors/d1/t")) && !caller.may_read(&f("sensors/d2/t")));
    assert!(!auth.may_read_metrics(&caller.0));
    for wrong in ["Bearer ewt_00", "Basic abc", "Bearer nonsense", "Bearer "] {
        let err = auth
            .resolve(&parts(&[("authorization", wrong)], "/"), false)
            .unwrap_err();
        assert_eq!(err.status(), StatusCode::UNAUTHORIZED, "{wrong}");
        assert!(
            !err.message().contains("ewt_"),
            "no credential echoed: {}",
            err.message()
        );
    }
    let huge = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
    assert!(auth
        .resolve(&parts(&[("authorization", &huge)], "/"), false)
        .is_err());
}

#[test]
fn the_query_token_counts_only_where_allowed() {
    let (auth, token) = with_token(&["sensors/#"]);
    let uri = format!("/v1/stream?filter=sensors/%23&access_token={token}");
    assert!(auth.resolve(&parts(&[], &uri), true).is_ok());
    assert!(auth.resolve(&parts(&[], &uri), false).is_err());
    let shown = redact_uri(&uri.parse().unwrap()).into_owned();
    assert_eq!(shown, "/v1/stream?filter=sensors/%23&access_token=REDACTED");
    assert!(!shown.contains(&token));
}

#[test]
fn a_stale_cookie_is_anonymous_where_allowed_and_401_elsewhere() {
    let (closed, _) = with_token(&["#"]);
    let cookie = [("cookie", "other=1; edgewatch_session=deadbeef")];
    let err = closed.resolve(&parts(&cookie, "/"), false).unwrap_err();
    assert_eq!(err.code(), "session_expired");
    let open = Authority::open(&["sensors/#".into()], &[]);
    assert!(open.resolve(&parts(&cookie, "/"), false).is_ok());
    let p = Arc::new(Principal::anonymous_everything());
    let id = closed.sessions.open(p);
    let cookie = format!("edgewatch_session={id}");
    let caller = closed
        .resolve(&parts(&[("cookie", &cookie)], "/"), false)
        .unwrap();
    assert!(caller.reads_everything());
}

#[test]
fn scope_is_the_requested_filters_when_readable_else_403() {
    let (auth, token) = with_token(&["sensors/d1/#", "sensors/+/temperature"]);
    let bearer = format!("Bearer {token}");
    let caller = auth
        .resolve(&parts(&[("authorization", &bearer)], "/"), false)
        .unwrap();
    assert_eq!(
        caller.scope(vec![f("sensors/d1/h")]).unwrap(),
        vec![f("sensors/d1/h")]
    );
    let err = caller
        .scope(vec![f("sensors/d1/h"), f("sensors/#")])
        .unwrap_err();
    assert_eq!(err.status(), StatusCode::FORBIDDEN);
    assert!(err.message().contains("sensors/#"));
    let own: Vec<String> = caller
        .scope(vec![])
        .unwrap()
        .iter()
        .map(|f| f.as_str().to_owned())
        .collect();
    assert_eq!(own, ["sensors/d1/#", "sensors/+/temperature"]);
    let (none, token) = with_token(&[]);
    let bearer = format!("Bearer {token}");
    let nothing = none
        .resolve(&parts(&[("authorization", &bearer)], "/"), false)
        .unwrap();
    assert_eq!(
        nothing.scope(vec![]).unwrap_err().status(),
        StatusCode::FORBIDDEN
    );
}

#[test]
fn allow_anonymous_opens_with_the_live_filters_but_not_metrics() {
    let (_, hash) = tokens::generate();
    let cfg = AuthConfig {
        allow_anonymous: true,
        tokens: vec![TokenConfig {
            name: "x".into(),
            hash,
            read: vec![],
            publish: vec![],
            metrics: true,
        }],
        ..AuthConfig::default()
    };
    let auth = Authority::new(&cfg, &["sensors/+/temperature".into()], &[], None).unwrap();
    let caller = auth.resolve(&parts(&[], "/"), false).unwrap();
    assert!(caller.may_read(&f("sensors/d1/temperature")) && !caller.may_read(&f("sensors/#")));
    assert!(!auth.may_read_metrics(&caller.0));
}
