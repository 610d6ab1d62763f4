//! `cairn dashboard` on a real run in a local folder: its JSON API against `cairn status --json`,
//! `cairn audit --json` and arithmetic; an entry's inclusion proof checked with the Merkle rule
//! on the slot's own bytes; a tampered store shows FAIL; and the page in headless Chromium, as a
//! person would see it, at a desktop and a phone width.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A `cairn dashboard` process, killed when dropped.
pub struct Dashboard {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address on a `dashboard: http://ADDR/ ...` line.
pub fn dashboard_address(line: &str) -> Option<String> {
    let rest = line.trim().strip_prefix("dashboard: ")?;
    Some(rest.split_whitespace().next()?.trim_end_matches('/').to_string())
}

/// Starts `cairn dashboard` on any free port, reading the ledger every 0.2 s.
fn start(url: &str) -> Dashboard {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["dashboard", "--store", url, "--listen", "127.0.0.1:0", "--poll-secs", "0.2"])
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start cairn dashboard");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = dashboard_address(&line).unwrap_or_else(|| panic!("first line: {line}"));
    Dashboard { child, base }
}

/// `GET url` over HTTP/1.1: (status code, body).
pub fn get(url: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut stream = TcpStream::connect(host).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(!head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{head}");
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status code");
    (status, body.to_string())
}

pub fn get_json(url: &str) -> Value {
    let (status, body) = get(url);
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Polls `/api/run` until `done` holds (60 s at most).
pub fn wait_for(base: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let run = get_json(&format!("{base}/api/run"));
        if done(&run) {
            return run;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "waited 60 s for {what}: {run}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn cairn_json(args: &[&str]) -> Value {
    let out = crate::cairn(args, &[]);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stderr)))
}

/// Debian's Chromium (infra/setup-browser.sh installs it); `CAIRN_CHROMIUM` may name another.
fn chromium() -> PathBuf {
    let path = PathBuf::from(std::env::var("CAIRN_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    assert!(path.exists(), "{} is missing: run `bash infra/setup-browser.sh` (make test does)", path.display());
    path
}

/// Headless Chromium on `url` at `width`x`height`, given 6 s of page time to fetch and draw:
/// with `screenshot`, writes a PNG there and returns nothing; without, returns the DOM as drawn.
pub fn browse(url: &str, width: u32, height: u32, screenshot: Option<&Path>) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--virtual-time-budget=6000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg(format!("--window-size={width},{height}"));
    match screenshot {
        Some(path) => cmd.arg(format!("--screenshot={}", path.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(url).stderr(Stdio::null()).output().expect("run chromium");
    assert!(out.status.success(), "chromium failed on {url}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Pixels of a PNG whose colour is within 12 of `rgb` on every channel.
fn pixels_near(png_path: &Path, rgb: [u8; 3]) -> usize {
    let decoder = png::Decoder::new(BufReader::new(std::fs::File::open(png_path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    assert!(channels >= 3, "an RGB screenshot");
    buf[..info.buffer_size()].chunks(channels).filter(|p| p.iter().zip(rgb).all(|(&a, b)| a.abs_diff(b) <= 12)).count()
}

/// The page's colours (src/dashboard/page.html): the OK and FAIL badges, and the loss curve.
const OK_GREEN: [u8; 3] = [0x13, 0x73, 0x33];
const FAIL_RED: [u8; 3] = [0xb3, 0x26, 0x1e];
const CURVE_BLUE: [u8; 3] = [0x27, 0x64, 0xc5];

/// Where a test keeps its screenshots (kept after the run, for a person to look at).
pub fn artifact(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Checks a page drawn at 1280x800 and 390x844: the loss chart has `points` training-loss points
/// and `eval_points` held-out ones, the
/// organisations are listed, the badge says `verdict`, nothing overflows the narrow width, and
/// the screenshots show the badge's colour and the curve. Returns the desktop screenshot's path.
pub fn check_page(
    base: &str,
    points: usize,
    eval_points: usize,
    organisations: &[&str],
    verdict: &str,
    name: &str,
) -> PathBuf {
    let page = format!("{base}/");
    let dom = browse(&page, 1280, 800, None);
    let chart = dom.split("data-testid=\"loss-chart\"").nth(1).and_then(|s| s.split("</svg>").next()).unwrap_or("");
    assert_eq!(chart.matches("class=\"point\"").count(), points, "points on the loss chart: {chart}");
    assert_eq!(chart.matches("class=\"eval-point\"").count(), eval_points, "held-out points: {chart}");
    assert_eq!(chart.matches("class=\"axis\"").count(), 2, "two axes");
    for org in organisations {
        assert!(dom.contains(&format!("data-org=\"{org}\"")), "organisation {org} listed");
    }
    let badge = format!("audit: {}</span>", verdict.to_uppercase());
    assert!(dom.contains(&badge), "the badge says {badge}");
    let narrow = browse(&page, 390, 844, None);
    assert!(narrow.contains("data-overflow=\"false\""), "the page fits 390 px without sideways scrolling");

    let (badge_colour, other) = if verdict == "ok" { (OK_GREEN, FAIL_RED) } else { (FAIL_RED, OK_GREEN) };
    let wide = artifact(&format!("{name}-1280x800.png"));
    browse(&page, 1280, 800, Some(&wide));
    assert!(pixels_near(&wide, badge_colour) > 200, "the {verdict} badge is drawn");
    assert_eq!(pixels_near(&wide, other), 0, "and not the other one");
    assert!(pixels_near(&wide, CURVE_BLUE) > 100, "the loss curve is drawn");
    let phone = artifact(&format!("{name}-390x844.png"));
    browse(&page, 390, 844, Some(&phone));
    assert!(pixels_near(&phone, badge_colour) > 100, "the badge is drawn on a phone too");
    eprintln!("dashboard screenshots: {} and {}", wide.display(), phone.display());
    wide
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_what_the_ledger_and_the_audit_say() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let last = crate::audit_cli::two_rounds(&url).await;
    let store = storage::open(&url).await.unwrap();
    let run_id = ledger::genesis_run_id(&store).await.unwrap();

    // The admin signs a held-out loss of round 1's result (2.1 nats); then cosigns the whole log.
    let evaluation = ledger::Body::Evaluation(ledger::Evaluation {
        round: ledger::Round(1),
        state: ledger::StateHash(last.hash().0),
        sequences: 64,
        loss_milli: 2100,
    });
    let admin = ledger::Keypair::from_seed([1; 32]);
    ledger::Appender::new(store.clone())
        .append(&[ledger::Entry::sign(run_id, evaluation, &[&admin]).unwrap()])
        .await
        .unwrap();
    let mut reader = ledger::Reader::replay(store.clone(), run_id).await.unwrap();
    let size = reader.next_seq().0;
    reader.publish_checkpoint(&admin, size).await.unwrap();

    let dashboard = start(&url);
    let run = wait_for(&dashboard.base, "the audit", |r| r["audit"]["verdict"].is_string());
    let ledger = &run["ledger"];

    // What `cairn status --json` prints is the dashboard's ledger view, and the audit part is
    // `cairn audit --json`'s report.
    assert_eq!(ledger, &cairn_json(&["status", "--store", &url, "--json"]));
    assert_eq!(run["audit"]["report"], cairn_json(&["audit", "--store", &url, "--json"]));
    assert_eq!(run["audit"]["verdict"], "ok");
    assert_eq!(run["audit"]["at_slots"], size);

    // The figures, from the run as the test wrote it: 2 rounds of two workers (losses 2400 and
    // 2399, then 2300 and 2299 milli-nats), the final state the test computed.
    assert_eq!(ledger["run"], run_id.to_string());
    assert_eq!(ledger["open_round"], 2);
    assert_eq!(ledger["final_rounds"], 2);
    assert_eq!(ledger["ledger"]["slots"], size);
    let rounds = ledger["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2);
    assert_eq!(rounds[0]["loss_milli"], (2400 + 2399) / 2);
    assert_eq!(rounds[1]["loss_milli"], (2300 + 2299) / 2);
    assert_eq!(rounds[1]["state"], last.hash().to_hex());
    assert_eq!(rounds[1]["eval_loss_milli"], 2100);
    assert_eq!(rounds[1]["evaluations"][0]["organisation"], "alpha");
    assert!(rounds[0]["eval_loss_milli"].is_null());
    assert_eq!(rounds[0]["contributions"], 2);
    let orgs: Vec<&str> =
        ledger["organisations"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(orgs, ["alpha", "beta"]);
    assert_eq!(ledger["snapshots"].as_array().unwrap().len(), 1);
    assert_eq!(ledger["checkpoint"]["size"], size);
    assert_eq!(ledger["checkpoint"]["cosigners"][0]["organisation"], "alpha");
    assert!(ledger["config"].is_null(), "a hand-made config is not a training spec");
    // Each round links to the entries it comes from, and they are of the right kind.
    for (field, kind) in [("close", "close_vote"), ("final_entry", "attestation")] {
        let pos = rounds[1][field].as_str().unwrap();
        let entry = get_json(&format!("{}/api/entry/{pos}", dashboard.base));
        assert_eq!(entry["entry"]["kind"], kind, "{field} at {pos}");
    }

    // An entry's inclusion proof, checked against the slot's bytes as stored and the checkpoint
    // root the test's own reader computed.
    let pos = rounds[1]["contribution_entries"][0].as_str().unwrap();
    let entry = get_json(&format!("{}/api/entry/{pos}", dashboard.base));
    assert_eq!(entry["entry"]["kind"], "contribution");
    let proof = &entry["inclusion"];
    assert_eq!(proof["verified"], true);
    let seq: u64 = pos.split('.').next().unwrap().parse().unwrap();
    let slot = store.get(&ledger::seq_key(ledger::Seq(seq)), 1 << 20).await.unwrap().bytes;
    let leaf = ledger::merkle::leaf_hash(&slot);
    assert_eq!(proof["leaf"], leaf.to_string());
    let path: Vec<ledger::Hash> = proof["path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            let mut b = [0u8; 32];
            hex::decode_to_slice(h.as_str().unwrap(), &mut b).unwrap();
            ledger::Hash(b)
        })
        .collect();
    let root = reader.root_at(size).unwrap();
    assert_eq!(proof["root"], root.to_string());
    assert!(ledger::merkle::verify_inclusion(&leaf, seq, size, &path, &root));
    assert_eq!(get(&format!("{}/api/entry/99999.0", dashboard.base)).0, 404);
    assert_eq!(get(&format!("{}/api/entry/x.y", dashboard.base)).0, 400);

    // Its /metrics, read by a Prometheus text-format parser, say the same.
    let (status, text) = get(&format!("{}/metrics", dashboard.base));
    assert_eq!(status, 200);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let value = |name: &str| {
        let sample = scrape.samples.iter().find(|s| s.metric == name).unwrap_or_else(|| panic!("{name} in {text}"));
        match sample.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} is not a number"),
        }
    };
    assert_eq!(value("cairn_ledger_slots"), size as f64);
    assert_eq!(value("cairn_final_rounds"), 2.0);
    assert_eq!(value("cairn_round"), 2.0);
    assert_eq!(value("cairn_audit_ok"), 1.0);
    assert_eq!(value("cairn_eval_loss"), 2.1);
    assert!(value("cairn_ledger_read_age_seconds") < 30.0);
    let gets = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "cairn_store_requests_total" && s.labels.get("outcome") == Some("ok"))
        .count();
    assert!(gets > 0, "store requests are counted: {text}");

    // The page, as a person sees it: two points on the loss curve, both organisations, OK.
    check_page(&dashboard.base, 2, 1, &["alpha", "beta"], "ok", "two-rounds");
    drop(dashboard);

    // Someone rewrites a counted update blob: the dashboard's audit, and its page, say FAIL.
    let blob = entry["entry"]["body"]["blob"].as_str().unwrap();
    std::fs::write(dir.path().join("blobs").join(blob), b"not the update that was signed").unwrap();
    let dashboard = start(&url);
    let run = wait_for(&dashboard.base, "the audit", |r| r["audit"]["verdict"].is_string());
    assert_eq!(run["audit"]["verdict"], "fail");
    let problem = run["audit"]["report"]["first_problem"].as_str().unwrap();
    assert!(problem.contains(blob), "{problem}");
    let dom = browse(&format!("{}/", dashboard.base), 1280, 800, None);
    assert!(dom.contains("data-testid=\"first-problem\""), "the page shows the problem");
    check_page(&dashboard.base, 2, 1, &["alpha", "beta"], "fail", "tampered");

    drop(dashboard);

    // A member's organisation name is anything the format allows, HTML included: the page shows
    // it as text and runs none of it.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let hostile = "<img src=x onerror=document.body.dataset.pwned=1>";
    crate::audit_cli::two_rounds_with(&url, hostile).await;
    let dashboard = start(&url);
    wait_for(&dashboard.base, "the audit", |r| r["audit"]["verdict"].is_string());
    let dom = browse(&format!("{}/", dashboard.base), 1280, 800, None);
    assert!(dom.contains("&lt;img src=x onerror=document.body.dataset.pwned=1&gt;"), "shown as text");
    assert!(!dom.contains("data-pwned"), "and never run");
    assert!(dom.contains("audit: OK</span>"), "the page drew");
}
