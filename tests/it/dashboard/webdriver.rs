//! Just enough of the W3C WebDriver protocol for the dashboard test, over reqwest: Debian's
//! chromedriver started on a free loopback port, and a session of headless Chromium that
//! navigates, runs scripts, types, clicks and takes screenshots.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use serde_json::{Value, json};

/// Debian's `chromium` package.
pub(crate) const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's `chromium-driver` package.
pub(crate) const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The key of an element reference in WebDriver's JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Fails, saying how to install them, unless Chromium and chromedriver are installed.
pub(crate) fn require_browser() {
    for bin in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(bin).exists(),
            "the dashboard's browser test needs {bin}, from Debian's chromium and chromium-driver \
             packages: `cargo xtask test` installs them, or run `apt-get install chromium chromium-driver`"
        );
    }
}

/// A chromedriver process, in its own process group: dropping it ends chromedriver and any
/// browser it started, even when a failing test unwinds past the session.
pub(crate) struct Chromedriver {
    child: Child,
    url: String,
    profile: PathBuf,
    http: reqwest::Client,
}

impl Chromedriver {
    /// Starts chromedriver on a free loopback port, logging to `<dir>/chromedriver.log`, and
    /// waits until it is ready.
    pub(crate) async fn start(dir: &Path) -> anyhow::Result<Chromedriver> {
        std::fs::create_dir_all(dir)?;
        let port = pool_harness::free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", dir.join("chromedriver.log").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {CHROMEDRIVER}"))?;
        let profile = dir.join(format!("profile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        let mut driver = Chromedriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            profile,
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = driver.child.try_wait()? {
                bail!("chromedriver exited at start with {status}; see {}", dir.display());
            }
            let ready = driver.http.get(format!("{}/status", driver.url)).send().await;
            if let Ok(resp) = ready
                && let Ok(body) = resp.json::<Value>().await
                && body["value"]["ready"] == true
            {
                return Ok(driver);
            }
            if Instant::now() > deadline {
                bail!("chromedriver on port {port} was not ready after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A new headless Chromium session with a fresh profile and a `width`×`height` window.
    pub(crate) async fn session(&self, width: u32, height: u32) -> anyhow::Result<Session> {
        let args = [
            "--headless",
            "--no-sandbox", // we run as root in CI
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            &format!("--window-size={width},{height}"),
            &format!("--user-data-dir={}", self.profile.display()),
        ];
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        }}});
        let value = call(
            &self.http,
            reqwest::Method::POST,
            &format!("{}/session", self.url),
            Some(capabilities),
        )
        .await
        .context("starting a Chromium session")?;
        let id = value["sessionId"].as_str().context("no sessionId")?;
        Ok(Session { http: self.http.clone(), url: format!("{}/session/{id}", self.url) })
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// One browser session.
pub(crate) struct Session {
    http: reqwest::Client,
    url: String,
}

/// An element found on the page.
pub(crate) struct Element(String);

impl Session {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        call(&self.http, method, &format!("{}{path}", self.url), body).await
    }

    /// Navigates to `url` and waits for the page to load.
    pub(crate) async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url }))).await.map(drop)
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub(crate) async fn execute(&self, script: &str) -> anyhow::Result<Value> {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// The first element matching the CSS `selector`.
    pub(crate) async fn find(&self, selector: &str) -> anyhow::Result<Element> {
        let body = json!({ "using": "css selector", "value": selector });
        let value = self.call(reqwest::Method::POST, "/element", Some(body)).await?;
        let id =
            value[ELEMENT].as_str().with_context(|| format!("no element {selector}: {value}"))?;
        Ok(Element(id.to_owned()))
    }

    /// Replaces an input's text with `text`, as key presses: select all (Ctrl+A), then type. One
    /// command that keeps the input focused throughout, so a page that refreshes inputs it
    /// does not see focused cannot slip its own value in between (as it can between WebDriver's
    /// Element Clear, which leaves the input unfocused, and a later Send Keys).
    pub(crate) async fn replace_text(&self, element: &Element, text: &str) -> anyhow::Result<()> {
        // U+E009 is Control, U+E000 releases the modifiers.
        self.type_text(element, &format!("\u{E009}a\u{E000}{text}")).await
    }

    /// Types `text` into an element, as key presses.
    pub(crate) async fn type_text(&self, element: &Element, text: &str) -> anyhow::Result<()> {
        let path = format!("/element/{}/value", element.0);
        self.call(reqwest::Method::POST, &path, Some(json!({ "text": text }))).await.map(drop)
    }

    /// Clicks an element.
    pub(crate) async fn click(&self, element: &Element) -> anyhow::Result<()> {
        let path = format!("/element/{}/click", element.0);
        self.call(reqwest::Method::POST, &path, Some(json!({}))).await.map(drop)
    }

    /// Resizes the window.
    pub(crate) async fn set_window_size(&self, width: u32, height: u32) -> anyhow::Result<()> {
        let body = json!({ "width": width, "height": height });
        self.call(reqwest::Method::POST, "/window/rect", Some(body)).await.map(drop)
    }

    /// A PNG of the window's viewport.
    pub(crate) async fn screenshot(&self) -> anyhow::Result<Vec<u8>> {
        let value = self.call(reqwest::Method::GET, "/screenshot", None).await?;
        let encoded = value.as_str().context("screenshot is not a string")?;
        Ok(base64::engine::general_purpose::STANDARD.decode(encoded)?)
    }

    /// Ends the session and closes the browser.
    pub(crate) async fn quit(self) -> anyhow::Result<()> {
        self.call(reqwest::Method::DELETE, "", None).await.map(drop)
    }
}

/// One WebDriver command: its `value`, or its error as an error.
async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let mut req = http.request(method.clone(), url).timeout(Duration::from_secs(60));
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.with_context(|| format!("WebDriver {method} {url}"))?;
    let status = resp.status();
    let mut body: Value = resp.json().await.with_context(|| format!("WebDriver {method} {url}"))?;
    if !status.is_success() {
        bail!(
            "WebDriver {method} {url}: {status} {}: {}",
            body["value"]["error"],
            body["value"]["message"]
        );
    }
    Ok(body["value"].take())
}
