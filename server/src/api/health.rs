//! Health probes. `/health/live`: the process answers. `/health/ready`: it can take
//! work: the data directory is writable and every configured model is loaded and warm.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;

/// `GET /health/live`: 200 `{"status":"live"}`.
pub async fn live() -> Json<Value> {
    Json(json!({ "status": "live" }))
}

/// `GET /health/ready`: 200 `{"status":"ready"}`, or 503
/// `{"status":"not_ready","reason":"..."}`.
pub async fn ready(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    let dir = state.data_dir.clone();
    let probe = tokio::task::spawn_blocking(move || probe_writable(&dir)).await;
    let failure = match probe {
        Ok(Ok(())) => match state.models.readiness() {
            Ok(()) => return (StatusCode::OK, Json(json!({ "status": "ready" }))),
            Err(reason) => reason,
        },
        Ok(Err(e)) => format!(
            "data directory {} is not writable: {e}",
            state.data_dir.display()
        ),
        Err(e) => format!("data directory check did not complete: {e}"),
    };
    tracing::warn!(reason = %failure, "not ready");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "status": "not_ready", "reason": failure })),
    )
}

/// Creates, writes and removes a uniquely named file in `dir`.
fn probe_writable(dir: &Path) -> std::io::Result<()> {
    let mut file = tempfile::Builder::new()
        .prefix(".ready-probe-")
        .tempfile_in(dir)?;
    file.write_all(b"ready\n")?;
    file.close()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_accepts_a_directory_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        probe_writable(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn probe_rejects_a_file_or_missing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "").unwrap();
        assert!(probe_writable(&file).is_err());
        assert!(probe_writable(&dir.path().join("missing")).is_err());
    }
}
