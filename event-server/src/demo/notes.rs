//! `POST/GET/PATCH/DELETE /api/v1/notes[/{id}]`: the demo note API.
//!
//! It follows the pattern matric-api's handlers follow: change the note in a
//! transaction, commit, and only then publish `NoteUpdated`, so a client that
//! re-fetches the note on that event sees the new state.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use event_core::EventBus;
use serde::Deserialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::store::{self, Note, NotePatch};
use crate::db::Db;
use crate::error::ServerError;

/// Largest note request body (`413` beyond).
pub const MAX_BODY_BYTES: usize = 128 * 1024;
/// Longest title, in bytes.
pub const MAX_TITLE_BYTES: usize = 1000;
/// Longest content, in bytes.
pub const MAX_CONTENT_BYTES: usize = 64 * 1024;
/// Most tags on one note.
pub const MAX_TAGS: usize = 32;
/// Longest tag, in bytes.
pub const MAX_TAG_BYTES: usize = 64;

/// State of the note routes.
#[derive(Clone, Debug)]
pub struct NotesState {
    /// The database the notes live in.
    pub db: Db,
    /// Where `NoteUpdated` goes.
    pub bus: EventBus,
}

/// Body of `POST /api/v1/notes`.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "contracts", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct NewNote {
    /// Title (required, not blank).
    pub title: String,
    /// Text.
    #[serde(default)]
    pub content: String,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// The note routes, mounted by the host.
pub fn router<S: Clone + Send + Sync + 'static>(state: NotesState) -> Router<S> {
    Router::new()
        .route("/api/v1/notes", get(list).post(create))
        .route(
            "/api/v1/notes/{id}",
            get(fetch).patch(update).delete(remove),
        )
        .with_state(state)
}

fn parse_id(id: &str) -> Result<Uuid, ServerError> {
    Uuid::parse_str(id).map_err(|_| {
        ServerError::bad_request("invalid_id", format!("{id:?} is not a note id (UUID)"))
    })
}

fn check_title(title: &str) -> Result<(), ServerError> {
    if title.trim().is_empty() {
        return Err(ServerError::bad_request(
            "invalid_title",
            "`title` must not be blank",
        ));
    }
    if title.len() > MAX_TITLE_BYTES {
        return Err(ServerError::bad_request(
            "invalid_title",
            format!("`title` is longer than {MAX_TITLE_BYTES} bytes"),
        ));
    }
    Ok(())
}

fn check_content(content: &str) -> Result<(), ServerError> {
    if content.len() > MAX_CONTENT_BYTES {
        return Err(ServerError::bad_request(
            "invalid_content",
            format!("`content` is longer than {MAX_CONTENT_BYTES} bytes"),
        ));
    }
    Ok(())
}

fn check_tags(tags: &[String]) -> Result<(), ServerError> {
    if tags.len() > MAX_TAGS {
        return Err(ServerError::bad_request(
            "invalid_tags",
            format!(
                "`tags` holds {} tags, at most {MAX_TAGS} are allowed",
                tags.len()
            ),
        ));
    }
    if let Some(i) = tags
        .iter()
        .position(|t| t.trim().is_empty() || t.len() > MAX_TAG_BYTES)
    {
        return Err(ServerError::bad_request(
            "invalid_tags",
            format!("`tags[{i}]` must be 1 to {MAX_TAG_BYTES} bytes and not blank"),
        ));
    }
    Ok(())
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ServerError> {
    serde_json::from_slice(body)
        .map_err(|e| ServerError::bad_request("invalid_body", format!("invalid note body: {e}")))
}

async fn list(State(state): State<NotesState>) -> Result<Json<Vec<Note>>, ServerError> {
    Ok(Json(store::list(&state.db).await?))
}

async fn fetch(
    State(state): State<NotesState>,
    Path(id): Path<String>,
) -> Result<Json<Note>, ServerError> {
    let id = parse_id(&id)?;
    store::get(&state.db, id)
        .await?
        .map(Json)
        .ok_or_else(|| ServerError::NotFound(format!("no note {id}")))
}

async fn create(
    State(state): State<NotesState>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Note>), ServerError> {
    let new: NewNote = json_body(&body)?;
    check_title(&new.title)?;
    check_content(&new.content)?;
    check_tags(&new.tags)?;
    let now = OffsetDateTime::now_utc();
    let note = Note {
        id: Uuid::now_v7(),
        has_links: store::has_links(&new.content),
        title: new.title,
        content: new.content,
        tags: new.tags,
        has_ai_content: false,
        created_at: now,
        updated_at: now,
    };
    let (note, _) = store::write(&state.db, &state.bus, None, None, |_| Ok(Some(note)))
        .await?
        .ok_or_else(|| ServerError::Internal("the new note was not stored".to_owned()))?;
    Ok((StatusCode::CREATED, Json(note)))
}

async fn update(
    State(state): State<NotesState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Note>, ServerError> {
    let id = parse_id(&id)?;
    let patch: NotePatch = json_body(&body)?;
    if let Some(title) = &patch.title {
        check_title(title)?;
    }
    if let Some(content) = &patch.content {
        check_content(content)?;
    }
    if let Some(tags) = &patch.tags {
        check_tags(tags)?;
    }
    let changed = store::write(&state.db, &state.bus, Some(id), None, |current| {
        let Some(mut note) = current else {
            return Ok(None);
        };
        if let Some(title) = patch.title {
            note.title = title;
        }
        if let Some(content) = patch.content {
            note.has_links = store::has_links(&content);
            note.content = content;
        }
        if let Some(tags) = patch.tags {
            note.tags = tags;
        }
        note.updated_at = OffsetDateTime::now_utc();
        Ok(Some(note))
    })
    .await?;
    let (note, _) = changed.ok_or_else(|| ServerError::NotFound(format!("no note {id}")))?;
    Ok(Json(note))
}

async fn remove(
    State(state): State<NotesState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ServerError> {
    let id = parse_id(&id)?;
    let removed = store::write(&state.db, &state.bus, Some(id), None, |_| Ok(None)).await?;
    removed.ok_or_else(|| ServerError::NotFound(format!("no note {id}")))?;
    Ok(StatusCode::NO_CONTENT)
}

/// What the `AiRevision` demo job does to its note: marks it AI-revised and
/// appends a revision line, commits, then announces the change — all before
/// the job reports completion.
pub async fn ai_revise(state: &NotesState, id: Uuid) -> Result<bool, ServerError> {
    let changed = store::write(&state.db, &state.bus, Some(id), None, |current| {
        let Some(mut note) = current else {
            return Ok(None);
        };
        note.has_ai_content = true;
        note.content.push_str("\n\n_Revised by AI._");
        note.updated_at = OffsetDateTime::now_utc();
        Ok(Some(note))
    })
    .await?;
    Ok(changed.is_some())
}
