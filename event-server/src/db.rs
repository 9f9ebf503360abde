//! The host's database handle: SQLite (default, a file) or PostgreSQL.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

use crate::error::ServerError;

/// A connection pool to the configured database.
#[derive(Clone, Debug)]
pub enum Db {
    /// SQLite.
    Sqlite(sqlx::SqlitePool),
    /// PostgreSQL.
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
}

impl Db {
    /// Connects, creating a SQLite file (and its directory) when missing.
    pub async fn connect(url: &str) -> Result<Db, ServerError> {
        if url.starts_with("sqlite:") {
            if let Some(dir) = sqlite_parent(url) {
                std::fs::create_dir_all(&dir).map_err(|e| {
                    ServerError::Startup(format!(
                        "cannot create database directory {}: {e}",
                        dir.display()
                    ))
                })?;
            }
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|e| ServerError::Startup(format!("invalid DATABASE_URL: {e}")))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10));
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                .connect_with(options)
                .await
                .map_err(|e| {
                    ServerError::Startup(format!("cannot open the SQLite database: {e}"))
                })?;
            return Ok(Db::Sqlite(pool));
        }
        #[cfg(feature = "postgres")]
        if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await
                .map_err(|e| ServerError::Startup(format!("cannot connect to PostgreSQL: {e}")))?;
            return Ok(Db::Postgres(pool));
        }
        Err(ServerError::Startup(
            "DATABASE_URL must start with sqlite:// or postgres://".to_owned(),
        ))
    }
}

fn sqlite_parent(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite:")?.trim_start_matches("//");
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || path.contains(":memory:") {
        return None;
    }
    std::path::Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(std::path::Path::to_path_buf)
}

impl Db {
    /// A trivial query, for health checks.
    pub async fn ping(&self) -> Result<(), ServerError> {
        let result = match self {
            Db::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop),
            #[cfg(feature = "postgres")]
            Db::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop),
        };
        result.map_err(|e| ServerError::Internal(format!("database unavailable: {e}")))
    }
}
