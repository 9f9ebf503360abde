//! Progress on stderr: on a terminal one line redrawn in place four times a
//! second; otherwise (a log file, a pipe, the bench's captured output) a
//! plain line every five seconds, without escape codes.

use std::io::{IsTerminal, Write};
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
        let terminal = std::io::stderr().is_terminal();
        let every = if terminal {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(5)
        };
        let task = (!quiet).then(|| {
            let render = render.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    draw(terminal, label, started, &render());
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
            let terminal = std::io::stderr().is_terminal();
            draw(terminal, self.label, self.started, &(self.render)());
            if terminal {
                eprintln!();
            }
        }
    }
}

fn draw(terminal: bool, label: &str, started: Instant, text: &str) {
    let mut err = std::io::stderr().lock();
    let elapsed = started.elapsed().as_secs_f64();
    let _ = if terminal {
        write!(err, "\r\x1b[2K[{label} {elapsed:>5.1}s] {text}")
    } else {
        writeln!(err, "[{label} {elapsed:>5.1}s] {text}")
    };
    let _ = err.flush();
}
