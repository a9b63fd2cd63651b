//! The review UI end to end in real headless Chromium, driven over WebDriver (chromedriver): sign in
//! with a reviewer token, open the queue, open a flag, record a dismissal with a reason, find it on the
//! audit page, and show a command line holding `<script>` as text. Screenshots are saved under
//! `target/e2e-screenshots/`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); without them the test
//! says so and passes, unless GPUATTEST_REQUIRE_BROWSER is set.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use gpuattest_tests::raw::{RawStream, enroll, new_key, report, sign};
use gpuattest_tests::{Collector, free_addr, http_request, token, wait_for};
use ring::signature::KeyPair;
use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    addr: String,
    session: String,
    child: std::process::Child,
}

impl Driver {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string());
        let (status, text) =
            http_request(&self.addr, method, &format!("/session/{}{path}", self.session), None, body.as_deref());
        assert_eq!(status, 200, "WebDriver {method} {path}: {text}");
        serde_json::from_str::<Value>(&text).expect("WebDriver JSON")["value"].clone()
    }
    fn find(&self, css: &str) -> String {
        wait_for(&format!("element {css}"), Duration::from_secs(15), || {
            let body = json!({"using": "css selector", "value": css}).to_string();
            let (status, text) =
                http_request(&self.addr, "POST", &format!("/session/{}/element", self.session), None, Some(&body));
            (status == 200)
                .then(|| serde_json::from_str::<Value>(&text).ok()?["value"][ELEMENT].as_str().map(str::to_string))
                .flatten()
        })
    }
    fn click(&self, css: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/click"), Some(json!({})));
    }
    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/value"), Some(json!({"text": text})));
    }
    fn js(&self, script: &str) -> Value {
        self.call("POST", "/execute/sync", Some(json!({"script": script, "args": []})))
    }
    fn screenshot(&self, dir: &Path, name: &str) {
        let png = self.call("GET", "/screenshot", None);
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap_or_default()).expect("png");
        std::fs::write(dir.join(format!("{name}.png")), bytes).expect("save screenshot");
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = http_request(&self.addr, "DELETE", &format!("/session/{}", self.session), None, None);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_driver(profile: &Path) -> Option<Driver> {
    let (chromium, driver) = (Path::new("/usr/bin/chromium"), Path::new("/usr/bin/chromedriver"));
    if !chromium.exists() || !driver.exists() {
        assert!(
            std::env::var_os("GPUATTEST_REQUIRE_BROWSER").is_none(),
            "chromium and chromium-driver are required here"
        );
        eprintln!("chromium or chromedriver is not installed; the browser test was skipped (.ci/run installs them)");
        return None;
    }
    let addr = free_addr();
    let port = addr.rsplit(':').next().unwrap_or("9515").to_string();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver");
    wait_for("chromedriver", Duration::from_secs(15), || std::net::TcpStream::connect(&addr).ok());
    let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
        "binary": chromium,
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                 format!("--user-data-dir={}", profile.display())]
    }}}});
    let (status, text) = http_request(&addr, "POST", "/session", None, Some(&caps.to_string()));
    assert_eq!(status, 200, "new WebDriver session: {text}");
    let session = serde_json::from_str::<Value>(&text).expect("json")["value"]["sessionId"]
        .as_str()
        .expect("session")
        .to_string();
    Some(Driver { addr, session, child })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviewer_dismisses_a_flag_in_the_browser_and_finds_it_audited() {
    let t = tempfile::tempdir().expect("tmp");
    let Some(driver) = start_driver(&t.path().join("profile")) else { return };
    let shots: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let data = t.path().join("data");
    let c = Collector::start(&data);
    // A flagged job whose command line tries to inject script into the review page.
    let key = new_key();
    let host_id =
        enroll(&c.url(), &token(&data, "enroll", Some("acme-ai")), &key, "gpu-node-xss").await.expect("enroll");
    let mut s =
        RawStream::open(&c.url(), &host_id, &gpuattest_proto::key_id(key.public_key().as_ref())).await.expect("stream");
    let cmdline = "python train.py --note <script>window.__xss=1</script><img src=x onerror=window.__xss=2> --model deepseek-ai/DeepSeek-V3";
    // Six reports a second apart with utilisation and energy, so the flag page has a timeline to draw.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let mut prev = Vec::new();
    for seq in 1..=6u64 {
        let mut r = report(&host_id, seq, &prev, cmdline);
        r.window_end_unix_ms = now - (6 - seq as i64) * 1000;
        r.window_start_unix_ms = r.window_end_unix_ms - 1000;
        r.agent_time_unix_ms = r.window_end_unix_ms;
        r.gpus[0].utilization_gpu_pct = Some(if seq % 2 == 0 { 95 } else { 40 });
        r.gpus[0].power_mw = Some(600_000);
        r.gpus[0].energy_mj = Some(1_000_000_000 + seq * 600_000);
        let signed = sign(&key, &r);
        prev = gpuattest_proto::sha256(&signed.report).to_vec();
        s.send(signed).await;
        let _ = s.next().await;
    }
    let reviewer = token(&data, "reviewer", None);

    let d = driver;
    d.call("POST", "/url", Some(json!({"url": format!("http://{}/", c.http)})));
    d.type_into("#token", &reviewer);
    d.click("#signin-form button");
    d.find("#flag-rows tr a.open");
    d.screenshot(&shots, "1-queue");
    d.click("#flag-rows tr a.open");
    // The detail is filled in when its fetch returns: wait for it rather than read the empty panel.
    let evidence = d.find("#d-evidence");
    let text = wait_for("the flag's evidence to render", Duration::from_secs(15), || {
        let t = d.call("GET", &format!("/element/{evidence}/text"), None);
        t.as_str().is_some_and(|t| !t.is_empty()).then_some(t)
    });
    assert!(
        text.as_str().is_some_and(|t| t.contains("<script>window.__xss=1</script>")),
        "the command line is shown as text: {text}"
    );
    assert_eq!(d.js("return window.__xss === undefined"), json!(true), "injected script must not run");
    d.screenshot(&shots, "2-flag");
    // The signed report behind the flag, re-verified on demand; then assign the flag.
    d.click("#r-rows button.reverify");
    wait_for("the re-verification result", Duration::from_secs(15), || {
        d.js("return document.getElementById('r-rows').innerText")
            .as_str()
            .filter(|t| t.contains("valid signature"))
            .map(str::to_string)
    });
    d.type_into("#a-name", "alice");
    d.click("#a-submit");
    wait_for("the assignment", Duration::from_secs(15), || {
        d.js("return document.getElementById('a-current').innerText")
            .as_str()
            .filter(|t| t.contains("assigned to alice"))
            .map(str::to_string)
    });
    d.screenshot(&shots, "2b-reverified-and-assigned");
    d.click("#d-decision option[value=dismiss]");
    d.type_into("#d-reason", "licensed research use, checked with the customer");
    d.click("#d-submit");
    wait_for("the dismissal in the audit table", Duration::from_secs(15), || {
        d.js("return document.getElementById('audit-rows').innerText")
            .as_str()
            .filter(|t| t.contains("flag.dismissed"))
            .map(str::to_string)
    });
    d.click("a[href='#audit']");
    d.screenshot(&shots, "3-audit");
    let audit = d.js("return document.getElementById('audit-rows').innerText");
    assert!(audit.as_str().is_some_and(|a| a.contains("licensed research use")), "{audit}");
}
