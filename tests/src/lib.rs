//! Helpers for gpuattest's integration tests: start real collector and agent processes on loopback,
//! real workload processes, and a raw gRPC client for hostile-input tests.
//!
//! The binaries come from the same target directory as the test executable, so run
//! `cargo build --workspace` before `cargo test --workspace` (the README's test command does).
//!
//! # Layout
//! - this file: process helpers ([`Collector`], [`Agent`], [`Workload`]), CLI wrappers, waiting.
//! - [`raw`]: a hand-driven agent (own key, crafted reports) for tamper, replay and key tests.

pub mod raw;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The directory holding the built binaries (`target/debug` or `target/release`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test-exe>
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf();
    for f in ["gpuattest-agent", "gpuattest-collector", "libgpuattest_nvml_sim.so"] {
        assert!(
            dir.join(f).exists(),
            "{} is missing: run `cargo build --workspace` before the integration tests",
            dir.join(f).display()
        );
    }
    dir
}

/// Path of a built binary or library.
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// The simulated NVML library.
pub fn sim_lib() -> PathBuf {
    bin("libgpuattest_nvml_sim.so")
}

/// Polls `f` every 50 ms until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command to completion and returns (exit code, stdout, stderr).
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.stdin(Stdio::null()).output().expect("run command");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A collector command against a data directory.
pub fn collector_cmd(data: &Path) -> Command {
    let mut c = Command::new(bin("gpuattest-collector"));
    c.arg("--data").arg(data).env_remove("GPUATTEST_DATA").env_remove("GPUATTEST_DATABASE");
    c.env_remove("GPUATTEST_EXPORT_KEY");
    c
}

/// Runs a collector command that prints JSON and returns it.
pub fn collector_json(data: &Path, args: &[&str]) -> Value {
    let (code, out, err) = run(collector_cmd(data).args(args));
    assert_eq!(code, 0, "gpuattest-collector {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("gpuattest-collector {args:?} printed non-JSON ({e}): {out}"))
}

/// Runs the demo briefly into `<dir>/data` and returns that data directory: a store with real evidence
/// (two tenants, flags, models).
pub fn demo_data(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    let (code, _, err) = run(Command::new(bin("gpuattest-collector"))
        .args(["demo", "--seconds", "4", "--interval", "500ms", "--data"])
        .arg(&data)
        .env_remove("GPUATTEST_DATA"));
    assert_eq!(code, 0, "demo: {err}");
    data
}

/// Mints a token.
pub fn token(data: &Path, role: &str, tenant: Option<&str>) -> String {
    let mut args = vec!["token", "create", "--role", role, "--json"];
    if let Some(t) = tenant {
        args.extend(["--tenant", t]);
    }
    collector_json(data, &args)["token"].as_str().expect("token").to_string()
}

/// `hosts list --json`, keyed by hostname.
pub fn hosts(data: &Path) -> Vec<Value> {
    collector_json(data, &["hosts", "list", "--json"]).as_array().cloned().unwrap_or_default()
}

/// One host's row by hostname.
pub fn host(data: &Path, hostname: &str) -> Option<Value> {
    hosts(data).into_iter().find(|h| h["hostname"] == hostname)
}

/// `flags list --json`.
pub fn flags(data: &Path) -> Vec<Value> {
    collector_json(data, &["flags", "list", "--json"]).as_array().cloned().unwrap_or_default()
}

/// Sends SIGTERM (graceful stop) to a child and waits up to `timeout` for it.
pub fn terminate(child: &mut Child, timeout: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).stderr(Stdio::null()).status();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A running `gpuattest-collector serve` on loopback ports chosen by the kernel.
pub struct Collector {
    /// The process.
    pub child: Child,
    /// `127.0.0.1:PORT` of gRPC.
    pub grpc: String,
    /// `127.0.0.1:PORT` of HTTP.
    pub http: String,
    /// The data directory.
    pub data: PathBuf,
}

impl Collector {
    /// Starts a collector on `data`, gRPC and HTTP on ports the kernel picks.
    pub fn start(data: &Path) -> Collector {
        Self::start_with(data, "127.0.0.1:0", &[])
    }

    /// Starts a collector with gRPC on `grpc` (to restart one where its agents expect it) and extra
    /// `serve` arguments.
    pub fn start_with(data: &Path, grpc: &str, extra: &[&str]) -> Collector {
        Self::start_env(data, grpc, extra, &[])
    }

    /// As [`Collector::start_with`], with environment variables set.
    pub fn start_env(data: &Path, grpc: &str, extra: &[&str], env: &[(&str, &Path)]) -> Collector {
        let mut cmd = collector_cmd(data);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .args(["serve", "--grpc-listen", grpc, "--http-listen", "127.0.0.1:0"])
            .args(extra)
            .env("GPUATTEST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start collector");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read listen line");
        // `listening grpc=ADDR http=ADDR`, or its JSON form under GPUATTEST_LOG_FORMAT=json.
        let json: Option<Value> = serde_json::from_str(&line).ok();
        let grab = |key: &str| {
            if let Some(v) = &json {
                return v["fields"][key.trim_end_matches('=')]
                    .as_str()
                    .unwrap_or_else(|| panic!("collector printed {line:?}, expected fields.{key}"))
                    .to_string();
            }
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_else(|| panic!("collector printed {line:?}, expected {key}ADDR"))
                .to_string()
        };
        let (grpc, http) = (grab("grpc="), grab("http="));
        Collector { child, grpc, http, data: data.to_path_buf() }
    }

    /// The agent-facing URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Stops it with SIGKILL (a crash).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(3));
    }
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// A running `gpuattest-agent run` on the simulated NVML library.
pub struct Agent {
    /// The process.
    pub child: Child,
    /// Its state directory.
    pub state_dir: PathBuf,
}

/// How to start an agent.
pub struct AgentSpec<'a> {
    /// Collector URLs.
    pub collectors: Vec<String>,
    /// Enrollment token.
    pub token: &'a str,
    /// State directory.
    pub state_dir: &'a Path,
    /// Scenario JSON file.
    pub scenario: &'a Path,
    /// Hostname to report.
    pub hostname: &'a str,
    /// sysfs tree.
    pub sys_root: &'a Path,
    /// Observation interval.
    pub interval: &'a str,
    /// Extra `run` arguments.
    pub extra: &'a [&'a str],
}

impl Agent {
    /// Starts an agent.
    pub fn start(spec: &AgentSpec<'_>) -> Agent {
        let mut cmd = Command::new(bin("gpuattest-agent"));
        cmd.arg("run");
        for c in &spec.collectors {
            cmd.args(["--collector", c]);
        }
        let child = cmd
            .args(["--enroll-token", spec.token, "--interval", spec.interval, "--hostname", spec.hostname])
            .arg("--state-dir")
            .arg(spec.state_dir)
            .arg("--nvml-lib")
            .arg(sim_lib())
            .arg("--sys-root")
            .arg(spec.sys_root)
            .args(["--drain-timeout", "30s"])
            .args(spec.extra)
            .env("GPUATTEST_NVML_SIM", spec.scenario)
            .env("GPUATTEST_LOG", "warn")
            .env_remove("GPUATTEST_NVML_LIB")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start agent");
        Agent { child, state_dir: spec.state_dir.to_path_buf() }
    }

    /// `status --json`.
    pub fn status(&self) -> Value {
        agent_status(&self.state_dir)
    }

    /// Graceful stop: the agent delivers its spool first (up to 30 s under load).
    pub fn stop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(40));
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `gpuattest-agent status --state-dir DIR --json`.
pub fn agent_status(state_dir: &Path) -> Value {
    let (code, out, err) =
        run(Command::new(bin("gpuattest-agent")).args(["status", "--json", "--state-dir"]).arg(state_dir));
    assert_eq!(code, 0, "agent status failed: {err}");
    serde_json::from_str(&out).expect("status JSON")
}

/// A real process with a chosen command line, alive until dropped. It is the collector binary in its
/// stand-in workload mode, with `argv0` and `args` as its visible command line.
pub struct Workload {
    /// The process.
    pub child: Child,
}

impl Workload {
    /// Starts one.
    pub fn start(argv0: &str, args: &[&str]) -> Workload {
        Self::start_with_env(argv0, args, &[])
    }

    /// Starts one with extra environment variables.
    pub fn start_with_env(argv0: &str, args: &[&str], env: &[(&str, &str)]) -> Workload {
        use std::os::unix::process::CommandExt;
        let child = Command::new(bin("gpuattest-collector"))
            .arg0(argv0)
            .args(args)
            .envs(env.iter().copied())
            .env("GPUATTEST_DEMO_WORKLOAD", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start workload");
        Workload { child }
    }

    /// Starts one that keeps `files` open (read-only) while it runs.
    pub fn start_holding(argv0: &str, args: &[&str], files: &[&Path]) -> Workload {
        let hold = std::env::join_paths(files).expect("paths without ':'");
        Self::start_with_env(argv0, args, &[("GPUATTEST_DEMO_HOLD", hold.to_str().expect("UTF-8 paths"))])
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a scenario placing `pids` on the first GPUs (one pid per GPU, in order), with `gpus` GPUs.
pub fn write_scenario(path: &Path, seed: &str, gpus: usize, pids: &[u32]) {
    let list: Vec<Value> = (0..gpus)
        .map(|i| match pids.get(i) {
            Some(pid) => serde_json::json!({"processes": [{"pid": pid, "used_memory_bytes": 40_000_000_000u64}]}),
            None => serde_json::json!({}),
        })
        .collect();
    std::fs::write(path, serde_json::json!({"seed": seed, "gpus": list}).to_string()).expect("write scenario");
}

/// Makes GPU `gpu` of a written scenario play `samples`, one per `sample_ms` (see the simulator's
/// README, "Traces").
pub fn play_trace(path: &Path, gpu: usize, samples: Vec<Value>, sample_ms: u64) {
    let mut s: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("read scenario")).expect("scenario");
    s["sample_ms"] = sample_ms.into();
    s["gpus"][gpu]["samples"] = Value::Array(samples);
    std::fs::write(path, s.to_string()).expect("write scenario");
}

/// Writes a sysfs tree with the given (address, vendor, device, class) PCI devices.
pub fn write_sysfs(root: &Path, devices: &[(&str, &str, &str, &str)]) {
    std::fs::create_dir_all(root.join("bus/pci/devices")).expect("sysfs root");
    for (addr, vendor, device, class) in devices {
        let d = root.join("bus/pci/devices").join(addr);
        std::fs::create_dir_all(&d).expect("mkdir");
        for (f, v) in [("vendor", vendor), ("device", device), ("class", class)] {
            std::fs::write(d.join(f), format!("{v}\n")).expect("write");
        }
    }
}

/// A blocking HTTP GET on loopback with an optional bearer token: (status, body).
pub fn http_get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    http_request(addr, "GET", path, token, None)
}

/// A minimal HTTP/1.1 request on loopback (no client dependency): (status, body).
pub fn http_request(addr: &str, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect HTTP");
    s.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write request");
    // Read the head, then exactly Content-Length bytes: some servers keep the connection open.
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf).expect("read response");
        if n == 0 {
            break raw.len();
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok()).flatten()
    });
    let mut body = raw[head_end..].to_vec();
    match length {
        Some(len) => {
            while body.len() < len {
                let n = s.read(&mut buf).expect("read body");
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&buf[..n]);
            }
        }
        None => {
            s.read_to_end(&mut body).expect("read body");
        }
    }
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A throwaway PKI made with the `openssl` command: a CA, a server certificate for `localhost` and
/// `127.0.0.1`, and a client certificate.
pub struct Pki {
    /// CA certificate.
    pub ca: PathBuf,
    /// Server certificate and key.
    pub server: (PathBuf, PathBuf),
    /// Client certificate and key.
    pub client: (PathBuf, PathBuf),
    /// A second node's client certificate and key.
    pub client2: (PathBuf, PathBuf),
}

/// Makes a [`Pki`] in `dir` (P-256 keys, valid two days). `None` when the `openssl` command is not
/// installed (the test then says so and passes), unless GPUATTEST_REQUIRE_OPENSSL is set.
pub fn make_pki(dir: &Path) -> Option<Pki> {
    if Command::new("openssl").arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        assert!(std::env::var_os("GPUATTEST_REQUIRE_OPENSSL").is_none(), "the openssl command is required here");
        eprintln!("the openssl command is not installed; the TLS test was skipped (.ci/run installs it)");
        return None;
    }
    let ossl = |args: &[&str]| {
        let (code, _, err) = run(Command::new("openssl").args(args).current_dir(dir));
        assert_eq!(code, 0, "openssl {args:?}: {err}");
    };
    let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    let mut ca = vec!["req", "-x509"];
    ca.extend(key);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=gpuattest-test-ca"]);
    ossl(&ca);
    for (name, usage, san) in [
        ("server", "serverAuth", "DNS:localhost,IP:127.0.0.1"),
        ("client", "clientAuth", "DNS:gpu-node-01"),
        ("client2", "clientAuth", "DNS:gpu-node-02"),
    ] {
        let (k, csr, pem, ext) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
        let mut req = vec!["req"];
        req.extend(key);
        req.extend(["-keyout", &k, "-out", &csr, "-subj", "/CN=gpuattest-test"]);
        ossl(&req);
        std::fs::write(
            dir.join(&ext),
            format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n"),
        )
        .expect("ext");
        ossl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }
    Some(Pki {
        ca: dir.join("ca.pem"),
        server: (dir.join("server.pem"), dir.join("server.key")),
        client: (dir.join("client.pem"), dir.join("client.key")),
        client2: (dir.join("client2.pem"), dir.join("client2.key")),
    })
}

/// The device identity the test PKI gives GPU `uuid`: 40 upper-case hex digits, like NVIDIA's.
pub fn device_serial(uuid: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, uuid.as_bytes());
    gpuattest_proto::hex(&d.as_ref()[..20]).to_uppercase()
}

/// Attestation keys and chains for simulated GPUs, made with `openssl`: a P-384 test root and
/// intermediate (never NVIDIA's), and per GPU `<uuid>.pk8` (its key), `<uuid>.pem` (leaf with the
/// device serial and the simulator's FWID in a TcbInfo extension, intermediate, root) and
/// `<uuid>.untrusted.pem` (the same key under a root nobody trusts). `None` without openssl, as
/// [`make_pki`].
pub fn make_gpu_pki(dir: &Path, uuids: &[&str]) -> Option<PathBuf> {
    if Command::new("openssl").arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        assert!(std::env::var_os("GPUATTEST_REQUIRE_OPENSSL").is_none(), "the openssl command is required here");
        eprintln!("the openssl command is not installed; the GPU evidence test was skipped (.ci/run installs it)");
        return None;
    }
    std::fs::create_dir_all(dir).expect("pki dir");
    let ossl = |args: &[&str]| {
        let (code, _, err) = run(Command::new("openssl").args(args).current_dir(dir));
        assert_eq!(code, 0, "openssl {args:?}: {err}");
    };
    let ext = |name: &str, text: &str| std::fs::write(dir.join(name), text).expect("ext");
    ext("ca.ext", "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n");
    for root in ["root", "untrusted-root"] {
        let subj = format!("/CN=gpuattest test {root}");
        ossl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-nodes",
            "-sha384",
            "-keyout",
            &format!("{root}.key"),
            "-out",
            &format!("{root}.pem"),
            "-days",
            "2",
            "-subj",
            &subj,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
    }
    let issue = |csr: &str, ca: &str, out: &str, extfile: &str| {
        ossl(&[
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-sha384",
            "-days",
            "2",
            "-extfile",
            extfile,
            "-out",
            out,
        ]);
    };
    ossl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-384",
        "-nodes",
        "-keyout",
        "intermediate.key",
        "-out",
        "intermediate.csr",
        "-subj",
        "/CN=gpuattest test device CA",
    ]);
    issue("intermediate.csr", "root", "intermediate.pem", "ca.ext");
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).expect("pem");
    for uuid in uuids {
        let (key, csr) = (format!("{uuid}.key"), format!("{uuid}.csr"));
        ossl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384", "-out", &key]);
        ossl(&["pkcs8", "-topk8", "-nocrypt", "-in", &key, "-outform", "DER", "-out", &format!("{uuid}.pk8")]);
        let subj = format!("/CN=GH100 A01 FSP BROM/serialNumber={}", device_serial(uuid));
        ossl(&["req", "-new", "-key", &key, "-out", &csr, "-subj", &subj]);
        // TcbInfo: SEQUENCE { fwids [6] SEQUENCE OF SEQUENCE { id-sha384, OCTET STRING } }.
        let fwid = gpuattest_nvml_sim::spdm::fwid(uuid);
        let mut der = vec![0x30, 0x41, 0xa6, 0x3f, 0x30, 0x3d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04];
        der.extend_from_slice(&[0x02, 0x02, 0x04, 0x30]);
        der.extend_from_slice(&fwid);
        let der: Vec<String> = der.iter().map(|b| format!("{b:02X}")).collect();
        let leaf_ext = format!("{uuid}.ext");
        ext(
            &leaf_ext,
            &format!(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n2.23.133.5.4.1=DER:{}\n",
                der.join(":")
            ),
        );
        issue(&csr, "intermediate", &format!("{uuid}.leaf.pem"), &leaf_ext);
        issue(&csr, "untrusted-root", &format!("{uuid}.untrusted-leaf.pem"), &leaf_ext);
        let leaf = read(&format!("{uuid}.leaf.pem"));
        std::fs::write(
            dir.join(format!("{uuid}.pem")),
            format!("{leaf}{}{}", read("intermediate.pem"), read("root.pem")),
        )
        .expect("chain");
        let other = read(&format!("{uuid}.untrusted-leaf.pem"));
        std::fs::write(dir.join(format!("{uuid}.untrusted.pem")), format!("{other}{}", read("untrusted-root.pem")))
            .expect("chain");
    }
    Some(dir.join("root.pem"))
}

/// A TCP forwarder that holds every chunk for `one_way` before passing it on, in each direction: a
/// network path of known delay on loopback (this kernel has no netem). Dropping it stops accepting;
/// connections already relayed end when their peers close.
pub struct DelayRelay {
    /// Where to connect to reach the target through the delay.
    pub addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl DelayRelay {
    /// Relays `127.0.0.1:PORT` to `target` with `one_way` added each way.
    pub fn start(target: &str, one_way: Duration) -> DelayRelay {
        Self::start_jittered(target, one_way, Duration::ZERO)
    }

    /// As [`DelayRelay::start`], each chunk further held a random time up to `jitter` (queueing on a
    /// real path), never reordered.
    pub fn start_jittered(target: &str, one_way: Duration, jitter: Duration) -> DelayRelay {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let addr = listener.local_addr().expect("addr").to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, target) = (stop.clone(), target.to_string());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(down) = conn else { continue };
                let Ok(up) = std::net::TcpStream::connect(&target) else { continue };
                for s in [&down, &up] {
                    let _ = s.set_nodelay(true);
                }
                let (down2, up2) = (down.try_clone().expect("clone"), up.try_clone().expect("clone"));
                std::thread::spawn(move || pump(down, up, one_way, jitter));
                std::thread::spawn(move || pump(up2, down2, one_way, jitter));
            }
        });
        DelayRelay { addr, stop }
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = std::net::TcpStream::connect(&self.addr);
    }
}

/// Copies `from` to `to`, each chunk released `delay` (plus up to `jitter`) after it was read, in order.
fn pump(mut from: std::net::TcpStream, mut to: std::net::TcpStream, delay: Duration, jitter: Duration) {
    use std::io::{Read, Write};
    let (tx, rx) = std::sync::mpsc::channel::<(std::time::Instant, Vec<u8>)>();
    let writer = std::thread::spawn(move || {
        for (due, bytes) in rx {
            let now = std::time::Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
    let mut buf = vec![0u8; 16 * 1024];
    // A small generator for the jitter (not security relevant), seeded from the clock.
    let mut x =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1;
    let mut last = std::time::Instant::now();
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let extra = jitter.mul_f64((x >> 11) as f64 / (1u64 << 53) as f64);
                last = last.max(std::time::Instant::now() + delay + extra);
                if tx.send((last, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
}
