//! `event-server`: the matric real-time event server.

use event_server::app::App;
use event_server::config::Config;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::load();
    let logs = match event_server::logging::init(&config) {
        Ok(logs) => logs,
        Err(e) => {
            eprintln!("event-server: {e}");
            return std::process::ExitCode::from(2);
        }
    };
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
