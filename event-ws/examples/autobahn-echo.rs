//! An echo server on `event-ws`'s own WebSocket implementation — the
//! upgrade handshake, framing, connection state machine, limits and close
//! handshake that `/api/v1/ws` uses ([`event_ws::echo_router`]) — for the
//! Autobahn|Testsuite (`cargo xtask conformance` runs it).
//!
//! ```sh
//! cargo run --release -p event-ws --example autobahn-echo -- 127.0.0.1:9001
//! cargo run --release -p event-ws --example autobahn-echo -- 127.0.0.1:0 --max-message-bytes 16777216
//! ```
//!
//! It serves `ws://ADDR/` (any port: `127.0.0.1:0` picks a free one) and
//! prints `listening on ws://HOST:PORT/` once it accepts connections. The
//! limits are the endpoint's defaults; `--max-message-bytes N` raises the
//! message limit (cases 9.* send up to 16 MiB) and the outbox budget with
//! it, so that an echo of the largest message fits.
//!
//! permessage-deflate is negotiated as on `/api/v1/ws` (cases 12.* and
//! 13.*): echoes of 256 bytes or more go back compressed;
//! `--compress-min-bytes N` changes that threshold (`0`: every echo that
//! shrinks) and `--no-compression` declines every offer.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use axum::serve::ListenerExt;
use event_ws::{WsConfig, echo_router};

const USAGE: &str = "usage: autobahn-echo [ADDR (127.0.0.1:9001)] [--max-message-bytes N] \
                     [--compress-min-bytes N] [--no-compression]";

/// The address and config the command line asks for.
fn parse(args: &[String]) -> Result<(SocketAddr, WsConfig), String> {
    let mut addr = "127.0.0.1:9001".to_owned();
    let mut config = WsConfig {
        path: "/".to_owned(),
        ..WsConfig::default()
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--max-message-bytes" => {
                let n: usize = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n > 0)
                    .ok_or("--max-message-bytes needs a positive number")?;
                config.max_message_bytes = n;
                // An echo is a reply, and replies count against the outbox
                // budget: it must hold the largest one (and a little more).
                config.outbox.max_bytes = config.outbox.max_bytes.max(n.saturating_mul(2));
            }
            "--compress-min-bytes" => {
                config.compress_min_bytes = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or("--compress-min-bytes needs a number")?;
            }
            "--no-compression" => config.compression = false,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other if !other.starts_with('-') => addr = other.to_owned(),
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    let addr = addr
        .parse()
        .map_err(|e| format!("bad address {addr}: {e}"))?;
    Ok((addr, config))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (addr, config) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("autobahn-echo: cannot listen on {addr}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let local = listener.local_addr().unwrap_or(addr);
    println!("listening on ws://{local}/");
    let _ = std::io::stdout().flush();
    // Like event-server: small writes go out at once.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let app = echo_router(config).into_make_service_with_connect_info::<SocketAddr>();
    if let Err(error) = axum::serve(listener, app).await {
        eprintln!("autobahn-echo: {error}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
