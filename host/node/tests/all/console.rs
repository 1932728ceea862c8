//! The web console in a real browser: three `wraft serve` processes serving HTTPS (the
//! default: each node's own certificate), Debian's Chromium driven headless through
//! chromedriver (WebDriver). The page must show the leader and the FSM, and its commit count
//! must move after writes. A screenshot is kept in `target/console.png`.
//!
//! Needs `chromium` and `chromium-driver`: `make console-test` installs them
//! (host/node/tests/browser-setup.sh) and runs this test.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client as Browser, ClientBuilder, Locator};

use crate::processes::{create_register, put, runtime, stop_cleanly, three_nodes_serving_https};

const READER: &str = "console-reader-token";
const WRITER: &str = "console-writer-token";

/// chromedriver on a free port, killed on drop.
struct Driver(Child, u16);

impl Driver {
    fn start() -> Self {
        let port = crate::cli::free_udp_ports(1);
        let binary = std::env::var("WRAFT_CHROMEDRIVER").unwrap_or("chromedriver".into());
        let child = Command::new(&binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{binary}: {e} (`make console-test` installs chromium-driver)")
            });
        Self(child, port)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A headless Chromium session, with the flags this machine's closed network needs, a
/// fresh profile, and the nodes' certificates accepted (the browser does not know the
/// cluster CA; the TLS test of the port is `http::the_http_port_is_tls...`).
async fn browser(driver: &Driver, profile: &std::path::Path) -> Browser {
    let chromium = std::env::var("WRAFT_CHROMIUM").unwrap_or("/usr/bin/chromium".into());
    let caps = serde_json::json!({
        "acceptInsecureCerts": true,
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                format!("--user-data-dir={}", profile.display()),
            ],
        },
    });
    let serde_json::Value::Object(caps) = caps else {
        unreachable!("a JSON object literal")
    };
    let url = format!("http://127.0.0.1:{}", driver.1);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(b) => return b,
            // chromedriver is still starting.
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for chromedriver: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no browser session: {e}"),
        }
    }
}

/// The text of `#id` once `ready` holds for it (30 s at most; the page polls every second).
async fn text_when(b: &Browser, id: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(e) = b.find(Locator::Id(id)).await
            && let Ok(t) = e.text().await
        {
            if ready(&t) {
                return t;
            }
            last = t;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let error = match b.find(Locator::Id("error")).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    panic!("#{id} stayed {last:?} (the page's error banner: {error:?})");
}

#[test]
#[ignore = "needs chromium and chromium-driver: make console-test"]
fn the_console_shows_the_cluster_and_its_commits_move_in_a_real_browser() {
    let dir = tempfile::tempdir().expect("tmp");
    let tokens = [format!("reader:{READER}"), format!("writer:{WRITER}")];
    let (certs, addrs, http_base, mut nodes) =
        three_nodes_serving_https(dir.path(), &tokens, &[], None);
    let client = |role: &str| {
        wraft_client::Client::new(addrs.clone(), &crate::processes::identity(&certs, role))
            .expect("client")
            .with_patience(Duration::from_secs(30))
    };
    let driver = Driver::start();
    let profile = tempfile::tempdir().expect("profile");
    runtime().block_on(async {
        let admin = client("admin");
        create_register(&admin).await.expect("an FSM");
        let leader = admin
            .status()
            .await
            .expect("status")
            .leader
            .expect("a leader");
        let b = browser(&driver, profile.path()).await;
        // Node 1's console, whichever node leads.
        b.goto(&format!("https://127.0.0.1:{http_base}/"))
            .await
            .expect("the page");
        let token = b.find(Locator::Id("token")).await.expect("#token");
        token.send_keys(READER).await.expect("typing the token");
        b.find(Locator::Id("connect"))
            .await
            .expect("#connect")
            .click()
            .await
            .expect("connect");
        let shown = text_when(&b, "leader", |t| t.parse::<u64>().is_ok()).await;
        assert_eq!(shown, leader.to_string(), "the console's leader");
        let fsm = format!("tr[data-fsm=\"{}\"]", crate::processes::register());
        b.wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css(&fsm))
            .await
            .expect("the FSM's row");
        let members = b
            .find_all(Locator::Css("#members tr[data-node]"))
            .await
            .expect("member rows");
        assert_eq!(members.len(), 3, "member rows");
        let before: u64 = text_when(&b, "committed", |t| t.parse::<u64>().is_ok())
            .await
            .parse()
            .expect("a number");
        // Four writers for 6 s, so the charts have a few seconds of commits to draw.
        let writer = client("writer");
        let until = Instant::now() + Duration::from_secs(6);
        let written: Vec<u64> = futures_util::future::join_all((0..4u32).map(|w| {
            let writer = &writer;
            async move {
                let mut n = 0;
                while Instant::now() < until {
                    writer.request(put(w, n)).await.expect("a write");
                    n += 1;
                }
                n
            }
        }))
        .await;
        let written: u64 = written.iter().sum();
        // Under load the leader puts several writes into one entry: the index the cluster
        // reports after the writes, not their count, is what the page must reach.
        let committed = admin
            .status()
            .await
            .expect("status")
            .committed
            .expect("a committed index");
        assert!(committed > before, "{written} writes committed nothing");
        let after = text_when(&b, "committed", |t| {
            t.parse::<u64>().is_ok_and(|n| n >= committed)
        })
        .await;
        eprintln!(
            "the console's commit index moved from {before} to {after} ({written} writes, \
             the cluster's index {committed})"
        );
        let png = b.screenshot().await.expect("a screenshot");
        let kept =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/console.png");
        std::fs::write(&kept, &png).expect("keeping the screenshot");
        eprintln!("screenshot: {}", kept.display());
        let error = b.find(Locator::Id("error")).await.expect("#error");
        assert!(
            !error.is_displayed().await.expect("visibility"),
            "the page shows an error: {}",
            error.text().await.unwrap_or_default()
        );
        b.close().await.expect("closing the browser");
    });
    stop_cleanly(&mut nodes);
}
