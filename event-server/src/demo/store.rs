//! The demo domain's notes table, in the host's database (SQLite or PostgreSQL).
//!
//! Every write runs in a transaction and returns the note as committed; the
//! HTTP layer publishes `NoteUpdated` only after `commit()` succeeded.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use time::OffsetDateTime;
use uuid::Uuid;

use event_bridge_jobs::{AfterCommit, NoteChange};
use event_core::{EventBus, NoteOperation};

use crate::db::Db;
use crate::error::ServerError;

/// A note of the demo domain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "contracts", derive(schemars::JsonSchema))]
pub struct Note {
    /// Its id.
    pub id: Uuid,
    /// Its title.
    pub title: String,
    /// Its text.
    pub content: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// Whether an AI revision touched it.
    pub has_ai_content: bool,
    /// Whether the text links elsewhere (`http://`, `https://` or `[[wiki]]` links).
    pub has_links: bool,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(
        feature = "contracts",
        schemars(with = "String", extend("format" = "date-time"))
    )]
    pub created_at: OffsetDateTime,
    /// When it last changed.
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(
        feature = "contracts",
        schemars(with = "String", extend("format" = "date-time"))
    )]
    pub updated_at: OffsetDateTime,
}

/// Fields of a change; `None` keeps the stored value.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotePatch {
    /// New title.
    pub title: Option<String>,
    /// New text.
    pub content: Option<String>,
    /// New tags.
    pub tags: Option<Vec<String>>,
}

/// Whether `content` links elsewhere.
pub fn has_links(content: &str) -> bool {
    content.contains("http://") || content.contains("https://") || content.contains("[[")
}

const SQLITE_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS demo_notes (
    id TEXT PRIMARY KEY NOT NULL,
    title TEXT NOT NULL,
    content TEXT NOT NULL,
    tags TEXT NOT NULL,
    has_ai_content INTEGER NOT NULL,
    has_links INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL)";

#[cfg(feature = "postgres")]
const PG_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS demo_notes (
    id UUID PRIMARY KEY,
    title TEXT NOT NULL,
    content TEXT NOT NULL,
    tags TEXT[] NOT NULL,
    has_ai_content BOOLEAN NOT NULL,
    has_links BOOLEAN NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL)";

fn db_error(e: sqlx::Error) -> ServerError {
    ServerError::Internal(format!("database error: {e}"))
}

/// Creates the notes table when missing.
pub async fn migrate(db: &Db) -> Result<(), ServerError> {
    match db {
        Db::Sqlite(pool) => sqlx::query(SQLITE_SCHEMA).execute(pool).await.map(drop),
        #[cfg(feature = "postgres")]
        Db::Postgres(pool) => sqlx::query(PG_SCHEMA).execute(pool).await.map(drop),
    }
    .map_err(db_error)
}

fn sqlite_note(row: &sqlx::sqlite::SqliteRow) -> Result<Note, ServerError> {
    let id: String = row.try_get("id").map_err(db_error)?;
    let tags: String = row.try_get("tags").map_err(db_error)?;
    let created: String = row.try_get("created_at").map_err(db_error)?;
    let updated: String = row.try_get("updated_at").map_err(db_error)?;
    let parse_time = |t: &str| {
        OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .map_err(|e| ServerError::Internal(format!("stored time {t:?} is invalid: {e}")))
    };
    Ok(Note {
        id: Uuid::parse_str(&id).map_err(|e| ServerError::Internal(format!("stored id: {e}")))?,
        title: row.try_get("title").map_err(db_error)?,
        content: row.try_get("content").map_err(db_error)?,
        tags: serde_json::from_str(&tags)
            .map_err(|e| ServerError::Internal(format!("stored tags: {e}")))?,
        has_ai_content: row.try_get("has_ai_content").map_err(db_error)?,
        has_links: row.try_get("has_links").map_err(db_error)?,
        created_at: parse_time(&created)?,
        updated_at: parse_time(&updated)?,
    })
}

#[cfg(feature = "postgres")]
fn pg_note(row: &sqlx::postgres::PgRow) -> Result<Note, ServerError> {
    Ok(Note {
        id: row.try_get("id").map_err(db_error)?,
        title: row.try_get("title").map_err(db_error)?,
        content: row.try_get("content").map_err(db_error)?,
        tags: row.try_get("tags").map_err(db_error)?,
        has_ai_content: row.try_get("has_ai_content").map_err(db_error)?,
        has_links: row.try_get("has_links").map_err(db_error)?,
        created_at: row.try_get("created_at").map_err(db_error)?,
        updated_at: row.try_get("updated_at").map_err(db_error)?,
    })
}

fn rfc3339(t: OffsetDateTime) -> Result<String, ServerError> {
    t.format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| ServerError::Internal(format!("cannot format time: {e}")))
}

/// Lists notes, newest first (at most 500).
pub async fn list(db: &Db) -> Result<Vec<Note>, ServerError> {
    const SQL: &str = "SELECT * FROM demo_notes ORDER BY created_at DESC LIMIT 500";
    match db {
        Db::Sqlite(pool) => sqlx::query(SQL)
            .fetch_all(pool)
            .await
            .map_err(db_error)?
            .iter()
            .map(sqlite_note)
            .collect(),
        #[cfg(feature = "postgres")]
        Db::Postgres(pool) => sqlx::query(SQL)
            .fetch_all(pool)
            .await
            .map_err(db_error)?
            .iter()
            .map(pg_note)
            .collect(),
    }
}

/// One note, if it exists.
pub async fn get(db: &Db, id: Uuid) -> Result<Option<Note>, ServerError> {
    match db {
        Db::Sqlite(pool) => sqlx::query("SELECT * FROM demo_notes WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(pool)
            .await
            .map_err(db_error)?
            .as_ref()
            .map(sqlite_note)
            .transpose(),
        #[cfg(feature = "postgres")]
        Db::Postgres(pool) => sqlx::query("SELECT * FROM demo_notes WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(db_error)?
            .as_ref()
            .map(pg_note)
            .transpose(),
    }
}

/// Writes `note` (insert or full replace) inside an open transaction.
async fn put_sqlite(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    note: &Note,
) -> Result<(), ServerError> {
    let tags = serde_json::to_string(&note.tags)
        .map_err(|e| ServerError::Internal(format!("cannot encode tags: {e}")))?;
    sqlx::query(
        "INSERT INTO demo_notes (id, title, content, tags, has_ai_content, has_links, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET title = excluded.title, content = excluded.content,
           tags = excluded.tags, has_ai_content = excluded.has_ai_content,
           has_links = excluded.has_links, updated_at = excluded.updated_at",
    )
    .bind(note.id.to_string())
    .bind(&note.title)
    .bind(&note.content)
    .bind(tags)
    .bind(note.has_ai_content)
    .bind(note.has_links)
    .bind(rfc3339(note.created_at)?)
    .bind(rfc3339(note.updated_at)?)
    .execute(&mut **tx)
    .await
    .map_err(db_error)?;
    Ok(())
}

#[cfg(feature = "postgres")]
async fn put_pg(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    note: &Note,
) -> Result<(), ServerError> {
    sqlx::query(
        "INSERT INTO demo_notes (id, title, content, tags, has_ai_content, has_links, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (id) DO UPDATE SET title = excluded.title, content = excluded.content,
           tags = excluded.tags, has_ai_content = excluded.has_ai_content,
           has_links = excluded.has_links, updated_at = excluded.updated_at",
    )
    .bind(note.id)
    .bind(&note.title)
    .bind(&note.content)
    .bind(&note.tags)
    .bind(note.has_ai_content)
    .bind(note.has_links)
    .bind(note.created_at)
    .bind(note.updated_at)
    .execute(&mut **tx)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// A new note.
    Created,
    /// A changed note.
    Updated,
    /// A removed note.
    Deleted,
}

impl Write {
    fn operation(self) -> NoteOperation {
        match self {
            Write::Created => NoteOperation::Created,
            Write::Updated => NoteOperation::Updated,
            Write::Deleted => NoteOperation::Deleted,
        }
    }
}

/// The `NoteUpdated` a committed write announces.
fn change_of(note: &Note, write: Write, user_id: Option<String>) -> NoteChange {
    NoteChange {
        title: Some(note.title.clone()),
        tags: note.tags.clone(),
        has_ai_content: note.has_ai_content,
        has_links: note.has_links,
        user_id,
        ..NoteChange::new(note.id, write.operation())
    }
}

fn commit_error(e: event_bridge_jobs::Error) -> ServerError {
    ServerError::Internal(format!("database error: {e}"))
}

/// Applies `change` to the note `id` (or a new note when `id` is `None`)
/// inside one transaction, queues its `NoteUpdated` on the transaction and
/// commits: the event is published only once the commit succeeded (and never
/// when anything fails), so a client that re-fetches the note on that event
/// sees the new state. This is the pattern matric-api's handlers follow.
///
/// `change` gets the current note (`None` for a new one) and returns the
/// note to store, or `None` to delete. Returns `Ok(None)` when `id` names no
/// note.
pub async fn write<F>(
    db: &Db,
    bus: &EventBus,
    id: Option<Uuid>,
    user_id: Option<String>,
    change: F,
) -> Result<Option<(Note, Write)>, ServerError>
where
    F: FnOnce(Option<Note>) -> Result<Option<Note>, ServerError>,
{
    match db {
        Db::Sqlite(pool) => {
            // IMMEDIATE: the write lock from the start. A deferred
            // transaction reads first and upgrades to a write, which fails
            // at once (SQLITE_BUSY, not waited out by the busy timeout) when
            // another connection to the file (the webhook store's) wrote in
            // between: a `500` on an update under load.
            let tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(db_error)?;
            let mut tx = AfterCommit::new(tx, bus);
            let current = match id {
                Some(id) => match sqlx::query("SELECT * FROM demo_notes WHERE id = ?")
                    .bind(id.to_string())
                    .fetch_optional(&mut **tx.transaction())
                    .await
                    .map_err(db_error)?
                {
                    Some(row) => Some(sqlite_note(&row)?),
                    None => return Ok(None),
                },
                None => None,
            };
            let existed = current.clone();
            let outcome = match change(current)? {
                Some(note) => {
                    put_sqlite(tx.transaction(), &note).await?;
                    let w = if existed.is_some() {
                        Write::Updated
                    } else {
                        Write::Created
                    };
                    (note, w)
                }
                None => {
                    let Some(old) = existed else { return Ok(None) };
                    sqlx::query("DELETE FROM demo_notes WHERE id = ?")
                        .bind(old.id.to_string())
                        .execute(&mut **tx.transaction())
                        .await
                        .map_err(db_error)?;
                    (old, Write::Deleted)
                }
            };
            tx.note_updated(change_of(&outcome.0, outcome.1, user_id));
            tx.commit().await.map_err(commit_error)?;
            Ok(Some(outcome))
        }
        #[cfg(feature = "postgres")]
        Db::Postgres(pool) => {
            let mut tx = AfterCommit::begin(pool, bus).await.map_err(commit_error)?;
            let current = match id {
                Some(id) => match sqlx::query("SELECT * FROM demo_notes WHERE id = $1 FOR UPDATE")
                    .bind(id)
                    .fetch_optional(&mut **tx.transaction())
                    .await
                    .map_err(db_error)?
                {
                    Some(row) => Some(pg_note(&row)?),
                    None => return Ok(None),
                },
                None => None,
            };
            let existed = current.clone();
            let outcome = match change(current)? {
                Some(note) => {
                    put_pg(tx.transaction(), &note).await?;
                    let w = if existed.is_some() {
                        Write::Updated
                    } else {
                        Write::Created
                    };
                    (note, w)
                }
                None => {
                    let Some(old) = existed else { return Ok(None) };
                    sqlx::query("DELETE FROM demo_notes WHERE id = $1")
                        .bind(old.id)
                        .execute(&mut **tx.transaction())
                        .await
                        .map_err(db_error)?;
                    (old, Write::Deleted)
                }
            };
            tx.note_updated(change_of(&outcome.0, outcome.1, user_id));
            tx.commit().await.map_err(commit_error)?;
            Ok(Some(outcome))
        }
    }
}
