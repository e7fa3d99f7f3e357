//! The status page in a real headless Chromium (Debian's `chromium`,
//! installed by `.ci/run`), driven over the DevTools protocol: the page
//! loads once, then a sync is started, and its progress must reach the page
//! over the websocket (the page never polls).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::http::start;

struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Cdp {
    ws: Ws,
    next: u64,
    session: Option<String>,
}

impl Cdp {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let mut msg = json!({"id": self.next, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .expect("chromium answers")
                .unwrap()
                .unwrap();
            let v: Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
            if v["id"] == self.next {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    async fn eval(&mut self, js: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": js, "returnByValue": true}),
            )
            .await;
        r["result"]["value"].clone()
    }
}

fn launch(profile: &std::path::Path) -> (Browser, String) {
    let bin = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
        .expect("a Chromium is needed for the status page test: apt-get install chromium (.ci/run does)");
    let mut child = Command::new(bin)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--remote-debugging-port=0",
            "about:blank",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let stderr = child.stderr.take().unwrap();
    let browser = Browser(child);
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("chromium printed its DevTools address")
            .unwrap();
        if let Some(i) = line.find("ws://") {
            break line[i..].trim().to_owned();
        }
    };
    // Keep draining stderr so chromium never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    (browser, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_a_sync_progressing_live() {
    let s = start(|_| {}).await;
    let src = s.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..300 {
        std::fs::write(src.join(format!("f{i:03}.txt")), vec![b'x'; 2000 + i]).unwrap();
    }
    let r = s
        .post(
            "/v1/sources",
            &s.admin,
            &json!({"name": "photos", "kind": {"type": "local_dir", "path": src}}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201);

    let profile = tempfile::tempdir().unwrap();
    let (_browser, ws_url) = launch(profile.path());
    let (ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    let mut cdp = Cdp {
        ws,
        next: 0,
        session: None,
    };
    let page = format!("http://{}/#token={}", s.addr, s.admin);
    let t = cdp.call("Target.createTarget", json!({"url": page})).await;
    let a = cdp
        .call(
            "Target.attachToTarget",
            json!({"targetId": t["targetId"], "flatten": true}),
        )
        .await;
    cdp.session = Some(a["sessionId"].as_str().unwrap().to_owned());

    let row = r#"(() => { const r = document.querySelector('tr[data-source="photos"]');
        return r ? { state: r.querySelector('.state').textContent,
                     items: r.querySelector('.items').textContent,
                     live: document.getElementById('conn').textContent,
                     error: document.getElementById('error').textContent } : null; })()"#;
    let wait = |deadline: Duration| Instant::now() + deadline;
    // The page loaded the source list over the API, and is live.
    let until = wait(Duration::from_secs(30));
    let before = loop {
        let v = cdp.eval(row).await;
        if v["live"] == "live" && v["state"] == "never synced" {
            break v;
        }
        assert!(Instant::now() < until, "the page did not load: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(before["error"], "");

    // Now the sync: everything the page shows from here came over the socket.
    let r = s.post("/v1/syncs", &s.admin, &json!({})).await;
    assert_eq!(r.status.as_u16(), 202);
    let until = wait(Duration::from_secs(60));
    let mut states = Vec::new();
    loop {
        let v = cdp.eval(row).await;
        let state = v["state"].as_str().unwrap_or("").to_owned();
        if states.last() != Some(&state) {
            states.push(state.clone());
        }
        if state == "succeeded" && v["items"] == "300 / 300" {
            break;
        }
        assert!(
            Instant::now() < until,
            "no live progress on the page: {v}, saw {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(states.len() >= 2, "the page changed state live: {states:?}");
    drop(cdp);
    s.stop().await;
}
