//! `event-server`: the matric real-time event server.

use event_server::app::App;
use event_server::config::Config;
use event_server::memory::{self, ReexecError};

fn main() -> std::process::ExitCode {
    let config = Config::load();
    // First, while this is the only thread: glibc reads its tunables only
    // when a program is loaded, so smaller malloc thread caches mean
    // re-executing this binary in place (see `event_server::memory`). It
    // returns only when that is not wanted or failed.
    let reexec = memory::limit_thread_caches(config.memory_trim_closed);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("event-server: cannot start the runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    runtime.block_on(run(config, reexec))
}

async fn run(config: Config, reexec: Result<(), ReexecError>) -> std::process::ExitCode {
    let logs = match event_server::logging::init(&config) {
        Ok(logs) => logs,
        Err(e) => {
            eprintln!("event-server: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Err(e) = reexec {
        tracing::warn!(
            error = %e,
            cause = %std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default(),
            "malloc's thread caches keep glibc's default size: after a mass close more memory stays resident"
        );
    }
    let app = match App::build(&config).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("event-server: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("event-server: cannot listen on {}: {e}", config.addr);
            return std::process::ExitCode::from(2);
        }
    };
    let addr = listener.local_addr().unwrap_or(config.addr);
    tracing::info!(%addr, "listening; dashboard at http://{addr}/");
    let code = match app.serve(listener, event_server::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("event-server: {e}");
            std::process::ExitCode::FAILURE
        }
    };
    logs.shutdown();
    code
}
