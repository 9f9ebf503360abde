//! Principal ids (issue 15, item 12): a keyed hash of the token under a
//! per-process random key — stable within a process, different in every
//! other process, and not checkable offline against a guessed token.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use event_core::{Authenticator, Credentials, StaticTokens, principal_id};
use sha2::{Digest, Sha256};

const TOKEN: &str = "cli-token-for-principal-ids";
const CHILD_ENV: &str = "EVENT_CORE_PRINT_PRINCIPAL_ID";

async fn client_id(token: &str) -> String {
    StaticTokens::new()
        .client(token)
        .authenticate(&Credentials::bearer(token))
        .await
        .expect("a configured client token is admitted")
        .id
}

#[tokio::test]
async fn the_same_token_has_the_same_id_within_a_process() {
    let first = client_id(TOKEN).await;
    // A separately built authenticator: the key is per process, not per instance.
    let second = client_id(TOKEN).await;
    assert_eq!(first, second);
    assert_eq!(first, principal_id("client", TOKEN));
    let hex = first.strip_prefix("client:").expect("client prefix");
    assert_eq!(hex.len(), 8);
    assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(first, client_id("another-token").await);
}

#[tokio::test]
async fn the_id_is_not_a_plain_digest_of_the_token() {
    // What an offline attacker with a guessed token could compute.
    let digest = Sha256::digest(TOKEN.as_bytes());
    let unkeyed: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let id = client_id(TOKEN).await;
    assert_ne!(id, format!("client:{unkeyed}"));
    assert!(!id.contains(&unkeyed));
}

/// Prints this process's id of `TOKEN` when run as the child of
/// `other_processes_give_other_ids`; a no-op otherwise.
#[test]
fn print_principal_id_child() {
    if std::env::var_os(CHILD_ENV).is_some() {
        println!("PRINCIPAL_ID={}", principal_id("client", TOKEN));
    }
}

fn id_from_another_process() -> String {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = Command::new(exe)
        .args([
            "print_principal_id_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("the test binary runs");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("child status").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the child did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = child.wait_with_output().expect("child output");
    assert!(output.status.success(), "child failed: {output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|l| l.split("PRINCIPAL_ID=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no id printed: {stdout}"))
        .to_owned()
}

#[test]
fn other_processes_give_other_ids() {
    let here = principal_id("client", TOKEN);
    let a = id_from_another_process();
    let b = id_from_another_process();
    assert!(a.starts_with("client:") && b.starts_with("client:"));
    // Three independent 32-bit tags: equal by chance with odds of about 2^-31.
    assert_ne!(a, here);
    assert_ne!(b, here);
    assert_ne!(a, b);
}
