//! A one-line progress display on stderr, redrawn four times a second.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A running progress line.
pub struct Progress {
    task: Option<tokio::task::JoinHandle<()>>,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    label: &'static str,
    started: Instant,
}

impl Progress {
    /// Starts redrawing `label: <render()>` (nothing when `quiet`).
    pub fn start(
        quiet: bool,
        label: &'static str,
        render: impl Fn() -> String + Send + Sync + 'static,
    ) -> Progress {
        let render: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(render);
        let started = Instant::now();
        let task = (!quiet).then(|| {
            let render = render.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    draw(label, started, &render());
                }
            })
        });
        Progress {
            task,
            render,
            label,
            started,
        }
    }

    /// Draws the final state and ends the line.
    pub fn finish(self) {
        if let Some(task) = self.task {
            task.abort();
            draw(self.label, self.started, &(self.render)());
            eprintln!();
        }
    }
}

fn draw(label: &str, started: Instant, text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\r\x1b[2K[{label} {:>5.1}s] {text}",
        started.elapsed().as_secs_f64()
    );
    let _ = err.flush();
}
