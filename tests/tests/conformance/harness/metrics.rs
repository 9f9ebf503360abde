//! `GET /metrics`, read with the workspace's one Prometheus text reader.

pub use event_test_support::Scrape;

use super::{Server, client};

/// `GET /metrics`, raw and parsed.
pub async fn scrape(server: &Server) -> (String, Scrape) {
    let res = client().get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain"), "{ct}");
    let text = res.text().await.unwrap();
    let parsed = Scrape::parse(&text);
    (text, parsed)
}
