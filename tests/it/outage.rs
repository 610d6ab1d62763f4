//! Store outages (issue 20, docs/BENCHMARKS.md "Store outages"): a federated run whose
//! participants lose the store for a while (every connection refused and every open one cut), reach
//! it through a slow network (each request held back), or write to a `file://` store whose disk is
//! full. Each run must finish on its own with every round counting both workers once, the audit
//! passing, and the participants' round timing showing the stall.
//!
//! Long modes: `CAIRN_OUTAGE_SECS=120` (default 10), `CAIRN_SLOW_STORE_MS=3000` (default 500).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::federation::{
    Fed, PARTICIPANTS, RUN_TIMEOUT, TWO_WORKERS_AND_A_VALIDATOR as MEMBERS, env_or, sections, spawn_participants,
};

/// A TCP relay in front of the S3 server that the test can take down (the port closed, so new
/// connections are refused, and every open connection cut) and bring back, and that can hold back
/// each request: the store as a participant's network sees it.
struct Relay {
    addr: SocketAddr,
    state: Arc<Mutex<RelayState>>,
}

struct RelayState {
    /// The relay was dropped: its thread ends.
    stopped: bool,
    down: bool,
    delay: Duration,
    open: Vec<TcpStream>,
}

impl Relay {
    fn to(upstream: &str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state =
            Arc::new(Mutex::new(RelayState { stopped: false, down: false, delay: Duration::ZERO, open: Vec::new() }));
        let (shared, upstream) = (state.clone(), upstream.to_string());
        std::thread::spawn(move || {
            let mut listener = Some(listener);
            loop {
                let (stopped, down) = {
                    let state = shared.lock().unwrap();
                    (state.stopped, state.down)
                };
                if stopped {
                    return;
                }
                if down {
                    listener = None; // the port is closed: connections are refused
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                let Some(open) = listener.as_ref() else {
                    // Bind the same port again (std sets SO_REUSEADDR); retry until it is free.
                    listener = TcpListener::bind(addr).ok();
                    listener.iter().for_each(|l| l.set_nonblocking(true).unwrap());
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                open.set_nonblocking(true).unwrap();
                match open.accept() {
                    Ok((client, _)) => relay_connection(client, &upstream, &shared),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Relay { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes the port and cuts every open connection, until [`Relay::up`].
    fn down(&self) {
        let mut state = self.state.lock().unwrap();
        state.down = true;
        for s in state.open.drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn up(&self) {
        self.state.lock().unwrap().down = false;
    }

    /// Holds back every request (the first bytes after a quiet moment on a connection) by `delay`.
    fn delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let mut state = self.state.lock().unwrap();
        state.stopped = true;
        for s in state.open.drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn relay_connection(client: TcpStream, upstream: &str, state: &Arc<Mutex<RelayState>>) {
    let _ = client.set_nonblocking(false);
    let Ok(server) = TcpStream::connect(upstream) else { return };
    {
        // Registered and checked under one lock: a connection accepted just as the outage began
        // must not live through it.
        let mut state = state.lock().unwrap();
        if state.down {
            let _ = client.shutdown(std::net::Shutdown::Both);
            let _ = server.shutdown(std::net::Shutdown::Both);
            return;
        }
        state.open.extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
    }
    let (mut c2s_from, mut c2s_to) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let shared = state.clone();
    // Client to server: a request's first bytes wait `delay`; its later chunks follow at once.
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut buf = vec![0u8; 64 * 1024];
        let mut last: Option<Instant> = None;
        while let Ok(n @ 1..) = c2s_from.read(&mut buf) {
            if last.is_none_or(|t| t.elapsed() > Duration::from_millis(50)) {
                let delay = shared.lock().unwrap().delay;
                std::thread::sleep(delay);
            }
            if c2s_to.write_all(&buf[..n]).is_err() {
                break;
            }
            last = Some(Instant::now());
        }
        let _ = c2s_to.shutdown(std::net::Shutdown::Both);
    });
    let (mut from, mut to) = (server, client);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

/// Seconds between the rounds `name` applied, in order, from the "s after the previous round" of its
/// log lines.
fn round_gaps(fed: &Fed, name: &str) -> Vec<f64> {
    fed.log_text(name)
        .lines()
        .filter_map(|l| l.strip_suffix(" s after the previous round")?.rsplit(", ").next()?.parse().ok())
        .collect()
}

/// How many final rounds `name` has applied so far (its log's lines that say so).
fn rounds_applied(fed: &Fed, name: &str) -> usize {
    let log = fed.log_text(name);
    log.lines().filter(|l| l.contains(" applied: ") || l.contains(" closed, ")).count()
}

/// A run of `rounds` on the test S3 server (rounds wait for both workers, a snapshot every 2), and
/// a relay in front of that server for its participants.
async fn run_behind_a_relay(rounds: u64) -> (Fed, Relay) {
    let fed = Fed::start(&MEMBERS, &sections(rounds, 2, 600, 2, "sign")).await;
    let endpoint = fed.env.iter().find(|(k, _)| k == "AWS_ENDPOINT_URL").map(|(_, v)| v.clone()).unwrap();
    let relay = Relay::to(endpoint.trim_start_matches("http://").trim_end_matches('/'));
    (fed, relay)
}

/// The store unreachable for `CAIRN_OUTAGE_SECS` (10 s; 120 s in the long mode) in the middle of
/// the run, for every participant at once. Rounds wait for both workers, so the run only finishes if
/// all of them come back by themselves; the stall shows in their round timing.
#[tokio::test(flavor = "multi_thread")]
async fn every_participant_recovers_by_itself_after_the_store_is_down_mid_run() {
    let secs = env_or("CAIRN_OUTAGE_SECS", 10);
    let rounds = 6;
    let (fed, relay) = run_behind_a_relay(rounds).await;
    let started = Instant::now();
    let mut children = spawn_participants(&fed, &[("AWS_ENDPOINT_URL", &relay.url())]);
    fed.wait_for_log(&mut children, "w1", "round 1 applied");
    relay.down();
    let down_at = started.elapsed();
    std::thread::sleep(Duration::from_secs(secs));
    let before: Vec<usize> = PARTICIPANTS.iter().map(|(name, _)| rounds_applied(&fed, name)).collect();
    relay.up();
    let up = Instant::now();
    // Time from the store's return to each participant's next applied round.
    let mut back = [None; 3];
    while back.iter().any(Option::is_none) {
        for (i, (name, _)) in PARTICIPANTS.iter().enumerate() {
            if back[i].is_none() && rounds_applied(&fed, name) > before[i] {
                back[i] = Some(up.elapsed().as_secs_f64());
            }
        }
        if up.elapsed() > RUN_TIMEOUT {
            fed.fail(&mut children, &format!("not everyone came back after the outage: {back:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    fed.wait_all(&mut children);
    let gaps = round_gaps(&fed, "w1");
    let longest = gaps.iter().cloned().fold(0.0, f64::max);
    eprintln!(
        "outage: store down {secs} s from {:.1} s; next round applied {:.1} s (w1), {:.1} s (w2), {:.1} s (v) after it \
         came back; {rounds} rounds in {:.1} s; w1's round gaps {gaps:?}",
        down_at.as_secs_f64(),
        back[0].unwrap(),
        back[1].unwrap(),
        back[2].unwrap(),
        started.elapsed().as_secs_f64()
    );
    for (name, _) in PARTICIPANTS {
        let log = fed.log_text(name);
        assert!(log.contains("rejoining in"), "{name} noticed the outage and rejoined: {log}");
    }
    assert!(longest >= secs as f64 - 0.5, "the round timing shows the {secs} s outage: {gaps:?}");
    fed.assert_each_round_counts_each_worker_once(rounds, &["w1", "w2"]);
}

/// Every request held back by `CAIRN_SLOW_STORE_MS` (500 ms; 3000 in the long mode) on its way to
/// the store: the run is slower, and nothing else changes.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_through_a_slow_store_completes_and_its_rounds_take_longer() {
    let delay = env_or("CAIRN_SLOW_STORE_MS", 500);
    let rounds = 3;
    let (fed, relay) = run_behind_a_relay(rounds).await;
    relay.delay(Duration::from_millis(delay));
    let started = Instant::now();
    let mut children = spawn_participants(&fed, &[("AWS_ENDPOINT_URL", &relay.url())]);
    fed.wait_all(&mut children);
    let gaps = round_gaps(&fed, "w1");
    eprintln!(
        "slow store: {delay} ms a request; {rounds} rounds in {:.1} s; w1's round gaps {gaps:?}",
        started.elapsed().as_secs_f64()
    );
    // A round is at least a few requests in a row (read the round's slots, upload, append, vote).
    assert!(!gaps.is_empty() && gaps.iter().all(|&g| g >= 2.0 * delay as f64 / 1000.0), "{gaps:?}");
    fed.assert_each_round_counts_each_worker_once(rounds, &["w1", "w2"]);
}

/// A mount namespace (of a new user namespace, so no privileges are needed) holding a small tmpfs at
/// `dir`: the processes of the test enter it with `nsenter`.
struct SmallDisk {
    holder: Child,
    wrap: Vec<String>,
}

impl SmallDisk {
    fn mount(dir: &std::path::Path, size: &str) -> SmallDisk {
        let script =
            format!("mount -t tmpfs -o size={size} cairn-full {} && echo mounted && exec sleep 3600", dir.display());
        let mut holder = Command::new("unshare")
            .args(["--user", "--map-root-user", "--mount", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run unshare (util-linux)");
        let mut line = String::new();
        use std::io::BufRead;
        let _ = std::io::BufReader::new(holder.stdout.take().unwrap()).read_line(&mut line);
        if line.trim() != "mounted" {
            let _ = holder.kill();
            let out = holder.wait_with_output().unwrap();
            panic!(
                "this test mounts a small tmpfs in a user namespace (unshare --user --map-root-user --mount), and \
                 this machine refused: {}(containers often forbid user namespaces; run the test suite where \
                 they are allowed, or as root)",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let pid = holder.id().to_string();
        let wrap = ["nsenter", "--target", &pid, "--user", "--mount", "--preserve-credentials", "--"];
        SmallDisk { holder, wrap: wrap.iter().map(|s| s.to_string()).collect() }
    }

    /// Runs a shell command inside the namespace.
    fn sh(&self, script: &str) -> std::process::Output {
        Command::new(&self.wrap[0]).args(&self.wrap[1..]).args(["sh", "-c", script]).output().unwrap()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// A `file://` store on a disk that fills up mid-run: writes fail with "No space left on device",
/// the participants say so and keep rejoining; once space is freed the run finishes with nothing
/// lost and nothing half-written in the ledger.
#[tokio::test(flavor = "multi_thread")]
async fn a_file_store_whose_disk_fills_up_mid_run_recovers_once_space_is_freed() {
    let secs = env_or("CAIRN_FULL_DISK_SECS", 10);
    let rounds = 6;
    let dir = tempfile::tempdir().unwrap();
    let disk_dir = dir.path().join("disk");
    std::fs::create_dir(&disk_dir).unwrap();
    let disk = SmallDisk::mount(&disk_dir, "16m");
    let store_dir = disk_dir.join("store");
    assert!(disk.sh(&format!("mkdir {}", store_dir.display())).status.success());
    let url = format!("file://{}", store_dir.display());
    let fed = Fed::start_in(dir, url, Vec::new(), disk.wrap.clone(), &MEMBERS, &sections(rounds, 2, 600, 2, "sign"), 1);
    let started = Instant::now();
    let mut children = spawn_participants(&fed, &[]);
    fed.wait_for_log(&mut children, "w1", "round 1 applied");
    let filler = disk_dir.join("filler");
    // dd stops at the first failed write: the disk is full.
    let filled =
        disk.sh(&format!("dd if=/dev/zero of={} bs=64k 2>&1; df -k {}", filler.display(), store_dir.display()));
    let full_at = started.elapsed();
    let before: Vec<usize> = PARTICIPANTS.iter().map(|(name, _)| rounds_applied(&fed, name)).collect();
    std::thread::sleep(Duration::from_secs(secs));
    let stalled: Vec<usize> = PARTICIPANTS.iter().map(|(name, _)| rounds_applied(&fed, name)).collect();
    let freed = disk.sh(&format!("rm {}", filler.display()));
    if !freed.status.success() {
        let why = format!("could not free the disk: {}", String::from_utf8_lossy(&freed.stderr));
        fed.fail(&mut children, &why);
    }
    fed.wait_all(&mut children);
    let gaps = round_gaps(&fed, "w1");
    eprintln!(
        "full disk: file store full from {:.1} s for {secs} s; {rounds} rounds in {:.1} s; rounds applied (w1, w2, v) \
         {before:?} when full, {stalled:?} {secs} s later; w1's round gaps {gaps:?}\n{}",
        full_at.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&filled.stdout)
    );
    // Whoever writes while the disk is full says why: the workers when it fills before their
    // contributions, the validator when they were in and its verdicts were next (a race the
    // machine's load decides).
    let logs: String = PARTICIPANTS.iter().map(|(name, _)| fed.log_text(name)).collect();
    let said = logs.lines().find(|l| l.contains("No space left on device"));
    assert!(said.is_some(), "the participants say why they stall: {logs}");
    eprintln!("full disk: the first participant line that says so: {}", said.unwrap_or_default());
    assert!(logs.contains("rejoining in"), "{logs}");
    // A full disk still takes writes into the pages a failed write frees, so a round may creep
    // through; the stall must still show.
    let longest = gaps.iter().cloned().fold(0.0, f64::max);
    assert!(longest >= secs as f64 / 2.0, "the round timing shows the stall: {gaps:?}");
    fed.assert_each_round_counts_each_worker_once(rounds, &["w1", "w2"]);
}
