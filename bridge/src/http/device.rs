//! What a device's page asks for beyond the catalogue: `GET /v1/devices/{deviceId}/payload`,
//! the last raw payload it sent (its first 512 bytes, kept by ingest:
//! `crate::ingest::last_payload`), and `GET /v1/devices/{deviceId}/history`, its recent status
//! changes (kept by the presence board: `crate::presence::history`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::dto::Timestamp;
use super::{ApiError, AppState};
use crate::presence::{DeviceStatus, StatusSource};

/// A device's last payload.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LastPayload {
    /// The device.
    pub device_id: String,
    /// The topic it came on.
    pub topic: String,
    /// When the hub received it.
    pub received_at: Timestamp,
    /// Its first 512 bytes, as UTF-8 (invalid bytes replaced).
    pub payload: String,
    /// Its whole length in bytes.
    pub payload_len: u64,
    /// True when `payload` holds only its start.
    pub truncated: bool,
}

/// The last raw payload of a device
///
/// Whatever it was (a reading, a status, a mapped firmware payload, a reject), as received;
/// kept in memory since the hub started, for at most 10,000 devices. For callers who may read
/// the device's topics.
#[utoipa::path(
    get,
    path = "/v1/devices/{deviceId}/payload",
    operation_id = "lastPayload",
    tag = "history",
    params(("deviceId" = String, Path, description = "The device.", example = "d1")),
    responses(
        (status = 200, description = "Its last payload.", body = LastPayload, example = json!({
            "deviceId": "d1", "topic": "sensors/d1/temperature",
            "receivedAt": "2026-11-28T10:00:00.012Z",
            "payload": "{\"value\":21.5,\"unit\":\"C\"}", "payloadLen": 26, "truncated": false
        })),
        (status = 401, response = super::Unauthorized),
        (status = 404, response = super::NotFound),
    )
)]
pub(crate) async fn last_payload(
    State(state): State<AppState>,
    caller: Caller,
    Path(device_id): Path<String>,
) -> Response {
    let allowed =
        caller.reads_everything() || caller.may_read_topic(&format!("sensors/{device_id}/status"));
    let last = state
        .payloads
        .as_ref()
        .filter(|_| allowed)
        .and_then(|p| p.get(&device_id));
    let Some(last) = last else {
        return ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: format!("no payload from device {device_id:?} since the hub started"),
        }
        .into_response();
    };
    Json(LastPayload {
        device_id,
        topic: last.topic,
        received_at: Timestamp(last.received_at_ms),
        truncated: last.bytes.len() < last.len,
        payload: String::from_utf8_lossy(&last.bytes).into_owned(),
        payload_len: last.len as u64,
    })
    .into_response()
}

/// Whether `caller` may read device `device_id` (its status topic, or everything).
fn may_read_device(caller: &Caller, device_id: &str) -> bool {
    caller.reads_everything() || caller.may_read_topic(&format!("sensors/{device_id}/status"))
}

/// One status change.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StatusChangeDto {
    /// The status from then on.
    #[schema(inline)]
    pub status: DeviceStatus,
    /// What it was derived from.
    #[schema(inline)]
    pub status_source: StatusSource,
    /// When it changed.
    pub at: Timestamp,
}

/// A device's recent status changes.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StatusHistory {
    /// The device.
    pub device_id: String,
    /// Newest first; empty when none was seen since the hub started.
    pub changes: Vec<StatusChangeDto>,
}

/// The recent status changes of a device
///
/// Each change of its shown status (online, stale, offline) since the hub started, newest
/// first, the last 50; kept in memory for at most 10,000 devices. For callers who may read the
/// device's topics (others get an empty list).
#[utoipa::path(
    get,
    path = "/v1/devices/{deviceId}/history",
    operation_id = "statusHistory",
    tag = "history",
    params(("deviceId" = String, Path, description = "The device.", example = "d1")),
    responses(
        (status = 200, description = "Its status changes.", body = StatusHistory, example = json!({
            "deviceId": "d1", "changes": [
                {"status": "online", "statusSource": "status", "at": "2026-11-28T10:00:00.012Z"},
                {"status": "offline", "statusSource": "status", "at": "2026-11-28T09:58:00.002Z"}
            ]
        })),
        (status = 401, response = super::Unauthorized),
    )
)]
pub(crate) async fn status_history(
    State(state): State<AppState>,
    caller: Caller,
    Path(device_id): Path<String>,
) -> Json<StatusHistory> {
    let changes = match may_read_device(&caller, &device_id) {
        true => state.presence.history(&device_id),
        false => Vec::new(),
    };
    Json(StatusHistory {
        changes: changes
            .into_iter()
            .map(|c| StatusChangeDto {
                status: c.status,
                status_source: c.source,
                at: Timestamp(c.at_ms),
            })
            .collect(),
        device_id,
    })
}
