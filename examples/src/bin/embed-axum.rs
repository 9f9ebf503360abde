//! An existing axum application — a tiny todo API with its own routes and
//! state — that adds matric's WebSocket, SSE and webhooks and is served by
//! `event_http::serve`, the serving edge `event-server` is measured with.
//!
//! ```text
//! cargo run -p examples --bin embed-axum -- 127.0.0.1:3002 [data-dir]
//! curl localhost:3002/todos
//! curl -X POST localhost:3002/todos -H 'content-type: application/json' -d '{"title":"milk"}'
//! curl -N localhost:3002/api/v1/events                  # SSE
//! websocat ws://localhost:3002/api/v1/ws                # WebSocket (send "refresh")
//! curl -X POST localhost:3002/api/v1/webhooks -H 'content-type: application/json' \
//!      -d '{"url":"https://example.com/hook"}'           # webhooks (SQLite in data-dir)
//! ```
//!
//! The todo app knows nothing of the transports beyond publishing an event
//! when a todo is added (`NoteUpdated`, as the HotM UI shows notes). The
//! glue in [`main`] is the part an embedding application writes. Every
//! client is admin here ([`AllowAnonymous`]): use `StaticTokens` or an own
//! `Authenticator` anywhere but on loopback.
//!
//! With `EMBED_AXUM_PUBLISH=1` the app also takes `POST /api/v1/events` (an
//! event or an array of them, as `event-server` does), so that `cargo xtask
//! bench` can drive it with `loadgen` exactly like the host.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use event_core::{
    AllowAnonymous, Authenticator, ConnectionRegistry, EventBus, NoteOperation, NoteUpdated,
    ServerEvent, SinkRunner, Uuid,
};
use event_sse::{SseConfig, SseEndpoint};
use event_webhook::{WebhookConfig, Webhooks};
use event_ws::{WsConfig, WsEndpoint};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

// ---- The existing application -------------------------------------------

/// A todo.
#[derive(Debug, Clone, Serialize)]
struct Todo {
    id: Uuid,
    title: String,
}

/// What `POST /todos` takes.
#[derive(Debug, Deserialize)]
struct NewTodo {
    title: String,
}

/// The app's state: its todos, and the bus it tells about new ones.
#[derive(Clone)]
struct Todos {
    items: Arc<Mutex<Vec<Todo>>>,
    bus: EventBus,
}

async fn list(State(todos): State<Todos>) -> Json<Vec<Todo>> {
    let items = todos.items.lock().unwrap_or_else(PoisonError::into_inner);
    Json(items.clone())
}

async fn add(State(todos): State<Todos>, Json(new): Json<NewTodo>) -> (StatusCode, Json<Todo>) {
    let todo = Todo {
        id: Uuid::now_v7(),
        title: new.title,
    };
    todos
        .items
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(todo.clone());
    todos.bus.publish(NoteUpdated {
        note_id: todo.id,
        title: Some(todo.title.clone()),
        tags: vec!["todo".to_owned()],
        has_ai_content: false,
        has_links: false,
        operation: Some(NoteOperation::Created),
        user_id: None,
    });
    (StatusCode::CREATED, Json(todo))
}

/// The application's router, as it was before events were added.
fn todo_app(bus: EventBus) -> Router {
    let todos = Todos {
        items: Arc::default(),
        bus,
    };
    Router::new()
        .route("/todos", get(list).post(add))
        .with_state(todos)
}

// ---- For the benchmark ----------------------------------------------------

/// What `POST /api/v1/events` takes: one event or an array.
#[derive(Deserialize)]
#[serde(untagged)]
enum Batch {
    Many(Vec<ServerEvent>),
    One(ServerEvent),
}

/// `POST /api/v1/events` (with `EMBED_AXUM_PUBLISH=1`): publishes the
/// events in order, as the host's publish route does for producers.
fn publish_route(bus: EventBus) -> Router {
    let publish = move |Json(batch): Json<Batch>| async move {
        let events = match batch {
            Batch::Many(events) => events,
            Batch::One(event) => vec![event],
        };
        let published = events.len();
        for event in events {
            bus.publish(event);
        }
        (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "published": published })),
        )
    };
    Router::new().route("/api/v1/events", axum::routing::post(publish))
}

// ---- The glue -------------------------------------------------------------

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:3002".to_owned());
    let dir = args.next().map_or_else(
        || std::env::temp_dir().join(format!("embed-axum-{}", std::process::id())),
        std::path::PathBuf::from,
    );
    std::fs::create_dir_all(&dir)?;

    let (bus, registry) = (EventBus::default(), ConnectionRegistry::new());
    let auth: Arc<dyn Authenticator> = Arc::new(AllowAnonymous);
    let ws = WsEndpoint::new(
        bus.clone(),
        registry.clone(),
        auth.clone(),
        WsConfig::default(),
    );
    let sse = SseEndpoint::new(
        bus.clone(),
        registry.clone(),
        auth.clone(),
        SseConfig::default(),
    );
    let db = format!("sqlite://{}/webhooks.db", dir.display());
    let webhooks = Webhooks::connect(&db, auth, WebhookConfig::default()).await?;
    let mut runner = SinkRunner::new(&bus);
    runner.register(ws.sink());
    runner.register(sse.sink());
    runner.register(webhooks.sink());
    let stop = CancellationToken::new();
    let deliveries = webhooks.start_worker(stop.child_token());
    let app = todo_app(bus.clone())
        .merge(ws.router())
        .merge(sse.router())
        .merge(webhooks.router());
    let app = match std::env::var("EMBED_AXUM_PUBLISH").as_deref() {
        Ok("1") => app.merge(publish_route(bus.clone())),
        _ => app,
    };

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    event_http::serve(listener, app)
        .stream_paths(&SseEndpoint::STREAM_PATHS)
        .registry(registry)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    stop.cancel();
    deliveries.shutdown(Duration::from_secs(2)).await;
    runner.shutdown(Duration::from_secs(2)).await;
    Ok(())
}
