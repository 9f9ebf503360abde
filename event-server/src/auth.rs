//! Admin checks for the host's management routes.

use std::sync::Arc;

use axum::http::HeaderMap;
use event_core::{Authenticator, Credentials, Principal};

use crate::error::ServerError;

/// Authenticates the request and requires an admin principal (in anonymous
/// local mode everyone is admin).
pub async fn require_admin(
    auth: &Arc<dyn Authenticator>,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Principal, ServerError> {
    let credentials = Credentials::from_headers(headers, query_token);
    let principal = auth.authenticate(&credentials).await?;
    if principal.is_admin() {
        Ok(principal)
    } else {
        Err(ServerError::Forbidden(
            "this route needs the admin token".to_owned(),
        ))
    }
}
