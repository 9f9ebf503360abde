//! Events queued on a transaction: published once after commit, never on
//! rollback, error or drop. Real SQLite (temp file) and, when configured,
//! real PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::str::FromStr;
use std::time::Duration;

use event_bridge_jobs::{AfterCommit, Error, NoteChange};
use event_core::{EventBus, NoteOperation, Received, ServerEvent, Subscription};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use uuid::Uuid;

struct TempDb {
    pool: SqlitePool,
    path: std::path::PathBuf,
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
        }
    }
}

async fn sqlite() -> TempDb {
    let path = std::env::temp_dir().join(format!("ebj-{}.db", Uuid::now_v7().simple()));
    let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
        .unwrap()
        .create_if_missing(true)
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(opts)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE notes (id TEXT PRIMARY KEY, title TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "CREATE TABLE note_tags (note_id TEXT NOT NULL REFERENCES notes(id) \
         DEFERRABLE INITIALLY DEFERRED, tag TEXT NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    TempDb { pool, path }
}

fn nothing_published(sub: &mut Subscription) -> bool {
    sub.try_recv().is_none()
}

async fn title_of(pool: &SqlitePool, id: Uuid) -> Option<String> {
    sqlx::query_scalar("SELECT title FROM notes WHERE id = ?")
        .bind(id.to_string())
        .fetch_optional(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn sqlite_commit_publishes_once_and_the_change_is_visible() {
    let db = sqlite().await;
    let bus = EventBus::default();
    let mut sub = bus.subscribe();
    let id = Uuid::now_v7();

    let mut tx = AfterCommit::begin(&db.pool, &bus).await.unwrap();
    sqlx::query("INSERT INTO notes (id, title) VALUES (?, ?)")
        .bind(id.to_string())
        .bind("Draft")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.note_updated(
        NoteChange::new(id, NoteOperation::Created)
            .title("Draft")
            .tags(["inbox"])
            .user("u-1")
            .memory("default"),
    );
    assert_eq!(tx.queued(), 1);
    assert!(nothing_published(&mut sub), "published before commit");

    let published = tx.commit().await.unwrap();
    assert_eq!(published.len(), 1);
    let Some(Received::Event(ev)) = sub.try_recv() else {
        panic!("not published after commit")
    };
    assert_eq!(ev.seq(), published[0].seq());
    let ServerEvent::NoteUpdated(n) = ev.payload() else {
        panic!("{ev:?}")
    };
    assert_eq!(n.note_id, id);
    assert_eq!(n.operation, Some(NoteOperation::Created));
    assert_eq!(n.user_id.as_deref(), Some("u-1"));
    assert_eq!(ev.memory(), Some("default"));
    // A client re-fetching on the event (another pooled connection) sees the note.
    assert_eq!(title_of(&db.pool, id).await.as_deref(), Some("Draft"));
    assert!(nothing_published(&mut sub), "published more than once");
}

#[tokio::test]
async fn sqlite_rollback_publishes_nothing() {
    let db = sqlite().await;
    let bus = EventBus::default();
    let mut sub = bus.subscribe();
    let id = Uuid::now_v7();

    let mut tx = AfterCommit::begin(&db.pool, &bus).await.unwrap();
    sqlx::query("INSERT INTO notes (id, title) VALUES (?, ?)")
        .bind(id.to_string())
        .bind("Draft")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.note_updated(NoteChange::new(id, NoteOperation::Created));
    tx.rollback().await.unwrap();

    assert!(nothing_published(&mut sub));
    assert_eq!(title_of(&db.pool, id).await, None);
}

/// A handler that fails half-way (`?` returns early): the transaction and
/// its events are dropped together.
async fn failing_update(pool: &SqlitePool, bus: &EventBus, id: Uuid) -> Result<(), Error> {
    let mut tx = AfterCommit::begin(pool, bus).await?;
    sqlx::query("UPDATE notes SET title = 'Changed' WHERE id = ?")
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
    tx.note_updated(NoteChange::new(id, NoteOperation::Updated).title("Changed"));
    sqlx::query("INSERT INTO no_such_table VALUES (1)")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

#[tokio::test]
async fn sqlite_error_before_commit_publishes_nothing() {
    let db = sqlite().await;
    let bus = EventBus::default();
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO notes (id, title) VALUES (?, 'Original')")
        .bind(id.to_string())
        .execute(&db.pool)
        .await
        .unwrap();
    let mut sub = bus.subscribe();

    let err = failing_update(&db.pool, &bus, id).await.unwrap_err();
    assert_eq!(err.code(), "database");
    assert!(nothing_published(&mut sub));
    assert_eq!(title_of(&db.pool, id).await.as_deref(), Some("Original"));
}

#[tokio::test]
async fn sqlite_failed_commit_publishes_nothing() {
    let db = sqlite().await;
    let bus = EventBus::default();
    let mut sub = bus.subscribe();
    let ghost = Uuid::now_v7();

    let mut tx = AfterCommit::begin(&db.pool, &bus).await.unwrap();
    // The deferred foreign key is only checked at COMMIT, which then fails.
    sqlx::query("INSERT INTO note_tags (note_id, tag) VALUES (?, 'x')")
        .bind(ghost.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.note_updated(NoteChange::new(ghost, NoteOperation::Updated));
    let result = tx.commit().await;
    assert!(result.is_err(), "the commit should fail");
    assert!(nothing_published(&mut sub));
}

#[tokio::test]
async fn sqlite_dropped_transaction_publishes_nothing() {
    let db = sqlite().await;
    let bus = EventBus::default();
    let mut sub = bus.subscribe();
    {
        let mut tx = AfterCommit::begin(&db.pool, &bus).await.unwrap();
        tx.note_updated(NoteChange::new(Uuid::now_v7(), NoteOperation::Deleted));
    }
    assert!(nothing_published(&mut sub));
    // The wrapper never publishes later either.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), sub.recv())
            .await
            .is_err()
    );
}

/// Dynamic SQL with a generated table name (no user input).
macro_rules! sql {
    ($($t:tt)*) => { sqlx::AssertSqlSafe(format!($($t)*)) };
}

fn postgres_url() -> Option<String> {
    match std::env::var("TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("EVENT_TEST_REQUIRE_SERVICES").as_deref() == Ok("1") {
                panic!("TEST_POSTGRES_URL is required (EVENT_TEST_REQUIRE_SERVICES=1)");
            }
            eprintln!("skipping: TEST_POSTGRES_URL is not set");
            None
        }
    }
}

#[tokio::test]
async fn postgres_commit_publishes_once_and_rollback_nothing() {
    let Some(url) = postgres_url() else { return };
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    // A table of our own: other crates' tests share this database.
    let table = format!("ebj_notes_{}", Uuid::now_v7().simple());
    sqlx::query(sql!(
        "CREATE TABLE {table} (id UUID PRIMARY KEY, title TEXT NOT NULL)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let bus = EventBus::default();
    let mut sub = bus.subscribe();

    let kept = Uuid::now_v7();
    let mut tx = AfterCommit::begin(&pool, &bus).await.unwrap();
    sqlx::query(sql!("INSERT INTO {table} (id, title) VALUES ($1, 'Kept')"))
        .bind(kept)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.note_updated(NoteChange::new(kept, NoteOperation::Created).title("Kept"));
    assert!(nothing_published(&mut sub));
    tx.commit().await.unwrap();
    let Some(Received::Event(ev)) = sub.try_recv() else {
        panic!("not published")
    };
    assert_eq!(ev.payload().note_id(), Some(kept));
    assert!(nothing_published(&mut sub));

    let lost = Uuid::now_v7();
    let mut tx = AfterCommit::begin(&pool, &bus).await.unwrap();
    sqlx::query(sql!("INSERT INTO {table} (id, title) VALUES ($1, 'Lost')"))
        .bind(lost)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.note_updated(NoteChange::new(lost, NoteOperation::Created));
    tx.rollback().await.unwrap();
    assert!(nothing_published(&mut sub));

    let titles: Vec<String> = sqlx::query_scalar(sql!("SELECT title FROM {table} ORDER BY title"))
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(titles, ["Kept"]);
    sqlx::query(sql!("DROP TABLE {table}"))
        .execute(&pool)
        .await
        .unwrap();
}
