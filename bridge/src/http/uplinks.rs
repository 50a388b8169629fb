//! `GET /v1/uplinks`: each uplink's state, cursor, lag and counters.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::AppState;
use crate::uplink::UplinkStatus;

/// The uplinks configured (`[[uplink]]`), in config order.
#[derive(Debug, Serialize, ToSchema)]
pub struct UplinkList {
    /// One per `[[uplink]]` section; empty without any.
    pub uplinks: Vec<UplinkStatus>,
}

/// The uplinks to central brokers: state, cursor, lag and counters
///
/// Listed for callers that may read `/metrics` or every topic; others get an empty list (as
/// `/v1/rejects` shows each caller only its own rejects).
#[utoipa::path(
    get,
    path = "/v1/uplinks",
    operation_id = "listUplinks",
    tag = "operations",
    responses(
        (status = 200, description = "Uplinks.", body = UplinkList, example = json!({"uplinks": [{
            "name": "central", "url": "mqtt://central.example:1883", "state": "connected",
            "since": "2026-11-28T09:00:00.000Z", "lastError": null, "lastErrorAt": null,
            "cursor": 120_400, "head": 120_412, "lagReadings": 12, "lagSeconds": 0.04,
            "forwarded": 120_400, "resent": 0, "refused": 0, "dropped": 0, "connects": 1
        }]})),
        (status = 401, response = super::Unauthorized),
        (status = 500, response = super::Internal),
    )
)]
pub(crate) async fn uplinks(State(state): State<AppState>, caller: Caller) -> Response {
    let allowed = caller.reads_everything() || state.auth.may_read_metrics(&caller.0);
    let Some(up) = state.uplinks.clone().filter(|_| allowed) else {
        return Json(UplinkList { uplinks: vec![] }).into_response();
    };
    match tokio::task::spawn_blocking(move || up.status()).await {
        Ok(uplinks) => Json(UplinkList { uplinks }).into_response(),
        Err(_) => super::ApiError {
            status: axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "the uplinks' status could not be read; see the hub's log".to_owned(),
        }
        .into_response(),
    }
}
