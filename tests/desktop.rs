//! Remote desktops through the relay, checked against software no one here wrote: FreeRDP's
//! shadow server sharing an Xvfb display as a tenant's `rdp` service (`rac desktop` through the
//! SP reads its screen and types into an xterm on it, with TLS and with NLA), and FreeRDP's
//! X11 client reaching the lab's desktop through `rac connect`. Then the lab's own desktop,
//! driven by `rac desktop` and by the client library: typed text and clicks come back in the
//! picture.
//!
//! The Debian packages these need (`.ci/run` installs them): freerdp2-shadow-x11,
//! freerdp2-x11, xvfb, xterm, imagemagick. A test whose program is missing says so and passes.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rac::lab::desktop::{self as lab_desktop, Region, Scribbles};

const RAC: &str = env!("CARGO_BIN_EXE_rac");
/// A hang guard: X servers, FreeRDP and the relay all start in well under this.
const PATIENCE: Duration = Duration::from_secs(60);
const WIDTH: usize = 1024;
const HEIGHT: usize = 768;
/// The xterm's background, filling the shared display.
const XTERM_BACKGROUND: [u8; 3] = [0x2a, 0x7f, 0xd4];

/// A child process killed when the test ends, however it ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether every program is on PATH; if not, says which is missing (the test then passes
/// without running: CI installs them).
fn have(programs: &[&str]) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for program in programs {
        if !std::env::split_paths(&path).any(|dir| dir.join(program).is_file()) {
            eprintln!("skipping: {program} is not installed (see .ci/run for the packages)");
            return false;
        }
    }
    true
}

fn rac(args: &[&str]) -> Command {
    let mut cmd = Command::new(RAC);
    cmd.args(args).env_remove("RUST_LOG");
    cmd
}

fn run_ok(cmd: &mut Command) -> String {
    let out: Output = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

/// Spawns and waits for the first line on stdout (or stderr) containing `marker`; the rest of
/// that pipe is drained so the child never blocks on it.
fn spawn_until(cmd: &mut Command, marker: &str, from_stderr: bool) -> (Proc, String) {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let (pipe, other): (Box<dyn Read + Send>, Box<dyn Read + Send>) = if from_stderr {
        (
            Box::new(child.stderr.take().expect("stderr")),
            Box::new(child.stdout.take().expect("stdout")),
        )
    } else {
        (
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        )
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut BufReader::new(other), &mut std::io::sink());
    });
    let (tx, rx) = mpsc::channel();
    let wanted = marker.to_string();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if !sent && line.contains(&wanted) {
                let _ = tx.send(line);
                sent = true;
            }
        }
    });
    let line = rx
        .recv_timeout(PATIENCE)
        .unwrap_or_else(|_| panic!("{cmd:?} printed no line with {marker:?}"));
    (Proc(child), line)
}

fn last_word(line: &str) -> String {
    line.split_whitespace().last().expect("word").to_string()
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < PATIENCE, "{what}: not reached in time");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A port nobody listens on now (for programs that cannot bind port 0 and say which).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

fn wait_listening(port: u16) {
    wait_until(&format!("something listening on {port}"), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

/// An Xvfb server on a display number it picks itself (`-displayfd`), WIDTH x HEIGHT.
fn xvfb() -> (Proc, String) {
    let mut child = Command::new("Xvfb")
        .args([
            "-displayfd",
            "1",
            "-screen",
            "0",
            &format!("{WIDTH}x{HEIGHT}x24"),
            "-nolisten",
            "tcp",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn Xvfb");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let number = rx.recv_timeout(PATIENCE).expect("Xvfb says its display");
    let display = format!(":{}", number.trim());
    assert!(display.len() > 1, "Xvfb gave no display number");
    (Proc(child), display)
}

/// An RGB picture.
struct Picture {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Picture {
    fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }

    /// The mean colour of a region.
    fn mean(&self, region: Region) -> [f64; 3] {
        let mut sum = [0f64; 3];
        for y in region.y..region.y + region.height {
            for x in region.x..region.x + region.width {
                let p = self.pixel(x, y);
                for c in 0..3 {
                    sum[c] += f64::from(p[c]);
                }
            }
        }
        let n = (region.width * region.height) as f64;
        sum.map(|s| s / n)
    }

    /// The largest difference of any channel of any pixel of `region` from `other`.
    fn max_difference(&self, other: &Picture, region: Region) -> u8 {
        let mut worst = 0;
        for y in region.y..region.y + region.height {
            for x in region.x..region.x + region.width {
                let (a, b) = (self.pixel(x, y), other.pixel(x, y));
                for c in 0..3 {
                    worst = worst.max(a[c].abs_diff(b[c]));
                }
            }
        }
        worst
    }
}

fn close_to(mean: [f64; 3], expected: [u8; 3], tolerance: f64) -> bool {
    (0..3).all(|c| (mean[c] - f64::from(expected[c])).abs() <= tolerance)
}

/// Reads the PNG `rac desktop` writes (8-bit RGB).
fn read_png(path: &Path) -> Picture {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(path).expect("open png"),
    ));
    let mut reader = decoder.read_info().expect("png header");
    let mut rgb = vec![0; reader.output_buffer_size().expect("png size")];
    let info = reader.next_frame(&mut rgb).expect("png data");
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    rgb.truncate(info.buffer_size());
    Picture {
        width: info.width as usize,
        height: info.height as usize,
        rgb,
    }
}

/// The X display's root window, through ImageMagick (as a binary PPM).
fn x_screenshot(display: &str) -> Option<Picture> {
    let out = Command::new("import")
        .args([
            "-display", display, "-window", "root", "-depth", "8", "ppm:-",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    parse_ppm(&out.stdout)
}

fn parse_ppm(data: &[u8]) -> Option<Picture> {
    // "P6", width, height, maxval, each followed by whitespace, then the pixels.
    let mut fields = Vec::new();
    let mut at = 0;
    while fields.len() < 4 {
        while data.get(at)?.is_ascii_whitespace() {
            at += 1;
        }
        let start = at;
        while !data.get(at)?.is_ascii_whitespace() {
            at += 1;
        }
        fields.push(std::str::from_utf8(&data[start..at]).ok()?.to_string());
    }
    at += 1;
    let (width, height): (usize, usize) = (fields[1].parse().ok()?, fields[2].parse().ok()?);
    (fields[0] == "P6" && fields[3] == "255").then_some(())?;
    let rgb = data.get(at..at + width * height * 3)?.to_vec();
    Some(Picture { width, height, rgb })
}

/// What the lab draws for `tenant` with `scribbles`, as a picture.
fn lab_picture(tenant: &str, scribbles: &Scribbles) -> Picture {
    let mut bgra = vec![0; WIDTH * HEIGHT * 4];
    let view = lab_desktop::ScreenView {
        tenant: tenant.into(),
        host: String::new(),
        jobs: Vec::new(),
    };
    lab_desktop::draw_screen(&mut bgra, &view, scribbles, 0);
    Picture {
        width: WIDTH,
        height: HEIGHT,
        rgb: bgra
            .chunks_exact(4)
            .flat_map(|p| [p[2], p[1], p[0]])
            .collect(),
    }
}

/// An SP (`rac sp run`) with one tenant `acme` (`rac tenant`) whose `[services]` are given.
struct World {
    sp: String,
    ca: String,
    password: String,
    _procs: Vec<Proc>,
    dir: tempfile::TempDir,
}

impl World {
    fn start(services_toml: &str) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("sp");
        let state = state.to_str().expect("utf8 path");
        let init: serde_json::Value = serde_json::from_str(&run_ok(&mut rac(&[
            "sp",
            "init",
            "--state-dir",
            state,
            "--json",
        ])))
        .expect("init json");
        let added: serde_json::Value = serde_json::from_str(&run_ok(&mut rac(&[
            "sp",
            "tenant",
            "add",
            "acme",
            "--state-dir",
            state,
            "--json",
        ])))
        .expect("add json");
        let (sp_proc, line) = spawn_until(
            &mut rac(&["sp", "run", "--state-dir", state, "--listen", "127.0.0.1:0"]),
            "SP listening on",
            true,
        );
        let sp = last_word(&line);
        let ca = init["ca_cert"].as_str().expect("ca").to_string();
        let config = dir.path().join("tenant.toml");
        std::fs::write(
            &config,
            format!(
                "name = \"acme\"\nsecret = \"{}\"\nca_cert = \"{ca}\"\nendpoints = [\"{sp}\"]\n\
                 [services]\n{services_toml}\n",
                added["secret"].as_str().expect("secret")
            ),
        )
        .expect("write tenant config");
        let (tenant_proc, _) = spawn_until(
            &mut rac(&["tenant", "--config", config.to_str().expect("utf8")]),
            "connected to the SP",
            true,
        );
        World {
            sp,
            ca,
            password: init["password"].as_str().expect("password").to_string(),
            _procs: vec![sp_proc, tenant_proc],
            dir,
        }
    }

    /// `rac desktop acme` as the SP's operator, with `extra` arguments.
    fn desktop(&self, rdp_password: &str, extra: &[&str]) -> Output {
        desktop(
            &self.sp,
            &self.ca,
            "admin",
            &self.password,
            rdp_password,
            extra,
        )
    }
}

fn desktop(
    sp: &str,
    ca: &str,
    operator: &str,
    password: &str,
    rdp_password: &str,
    extra: &[&str],
) -> Output {
    let mut cmd = rac(&[
        "desktop", "acme", "--sp", sp, "--ca", ca, "--user", operator,
    ]);
    cmd.args(extra)
        .env("RAC_PASSWORD", password)
        .env("RAC_RDP_PASSWORD", rdp_password);
    output_within(&mut cmd)
}

/// Runs `cmd` to its end, which must come within PATIENCE (a hang is a failure).
fn output_within(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = read(stdout.map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = read(stderr.map(|p| Box::new(p) as Box<dyn Read + Send>));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > PATIENCE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout"),
        stderr: stderr.join().expect("stderr"),
    }
}

fn assert_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "rac desktop failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An Xvfb display filled by an xterm of colour `XTERM_BACKGROUND` that runs `cat > typed`.
fn xterm_display(typed: &Path) -> (Vec<Proc>, String) {
    let (x, display) = xvfb();
    let xterm = Command::new("xterm")
        .args([
            "-display",
            &display,
            "-bg",
            "#2a7fd4",
            "-fg",
            "white",
            // Larger than the screen: the background covers all of it.
            "-geometry",
            "250x90+0+0",
            "-e",
            "sh",
            "-c",
            &format!("exec cat > '{}'", typed.display()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn xterm");
    let xterm = Proc(xterm);
    wait_until("the xterm shown", || {
        x_screenshot(&display).is_some_and(|p| {
            close_to(
                p.mean(Region {
                    x: 400,
                    y: 300,
                    width: 200,
                    height: 200,
                }),
                XTERM_BACKGROUND,
                1.0,
            )
        })
    });
    (vec![xterm, x], display)
}

/// FreeRDP's shadow server sharing `display`, with extra security arguments.
fn shadow_server(display: &str, security: &[&str]) -> (Proc, u16) {
    let port = free_port();
    let mut cmd = Command::new("freerdp-shadow-cli");
    cmd.env("DISPLAY", display)
        .arg(format!("/port:{port}"))
        .arg("/bind-address:127.0.0.1")
        .args(security)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let shadow = Proc(cmd.spawn().expect("spawn freerdp-shadow-cli"));
    wait_listening(port);
    (shadow, port)
}

/// The regions of the shared screen that only the xterm's background covers (its text and
/// cursor are at the top left).
const BACKGROUND_REGIONS: [Region; 3] = [
    Region {
        x: 400,
        y: 300,
        width: 200,
        height: 200,
    },
    Region {
        x: 900,
        y: 650,
        width: 100,
        height: 100,
    },
    Region {
        x: 50,
        y: 600,
        width: 150,
        height: 100,
    },
];

#[test]
fn rac_desktop_reads_and_types_into_freerdps_shadow_server_over_tls() {
    if !have(&["Xvfb", "xterm", "import", "freerdp-shadow-cli"]) {
        return;
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let typed = scratch.path().join("typed.txt");
    let (_x, display) = xterm_display(&typed);
    let (_shadow, port) = shadow_server(&display, &["/sec:tls", "-auth"]);
    let world = World::start(&format!("rdp = \"127.0.0.1:{port}\""));

    let shot = world.dir.path().join("shadow.png");
    let shot_s = shot.to_str().expect("utf8");
    let said = assert_ok(&world.desktop(
        "unused",
        &[
            "--rdp-user",
            "tester",
            "--screenshot",
            shot_s,
            "--wait-secs",
            "20",
        ],
    ));
    assert!(said.contains("Tls"), "{said}");
    let picture = read_png(&shot);
    assert_eq!((picture.width, picture.height), (WIDTH, HEIGHT));
    for region in BACKGROUND_REGIONS {
        let mean = picture.mean(region);
        // FreeRDP may encode lossily (RemoteFX): the colour within a few steps.
        assert!(
            close_to(mean, XTERM_BACKGROUND, 6.0),
            "{region:?}: {mean:?}"
        );
    }

    // Typed as key strokes into the xterm, whose `cat` writes the line to the file.
    assert_ok(&world.desktop(
        "unused",
        &[
            "--rdp-user",
            "tester",
            "--screenshot",
            shot_s,
            "--type",
            r"Hello from rac: 1+1=2 {ok}\n",
        ],
    ));
    wait_until("the typed line in the file", || {
        std::fs::read_to_string(&typed).is_ok_and(|text| text == "Hello from rac: 1+1=2 {ok}\n")
    });
}

/// A SAM file line for FreeRDP's NLA: `user:::NT-hash:::`, the hash MD4 of the UTF-16LE
/// password.
fn sam_line(user: &str, password: &str) -> String {
    use md4::{Digest, Md4};
    let utf16: Vec<u8> = password.encode_utf16().flat_map(u16::to_le_bytes).collect();
    format!("{user}:::{}:::\n", hex::encode(Md4::digest(&utf16)))
}

#[test]
fn rac_desktop_logs_in_with_nla_and_names_a_wrong_password() {
    if !have(&["Xvfb", "xterm", "import", "freerdp-shadow-cli"]) {
        return;
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let sam = scratch.path().join("sam");
    std::fs::write(&sam, sam_line("tester", "Correct-Horse-7")).expect("write sam");
    let (_x, display) = xterm_display(&scratch.path().join("typed.txt"));
    let sam_arg = format!("/sam-file:{}", sam.display());
    let (_shadow, port) = shadow_server(&display, &["/sec:nla", &sam_arg]);
    let world = World::start(&format!("rdp = \"127.0.0.1:{port}\""));

    let shot = world.dir.path().join("nla.png");
    let shot_s = shot.to_str().expect("utf8");
    let said = assert_ok(&world.desktop(
        "Correct-Horse-7",
        &[
            "--rdp-user",
            "tester",
            "--screenshot",
            shot_s,
            "--wait-secs",
            "20",
        ],
    ));
    assert!(said.contains("Nla"), "{said}");
    let picture = read_png(&shot);
    let mean = picture.mean(BACKGROUND_REGIONS[0]);
    assert!(close_to(mean, XTERM_BACKGROUND, 6.0), "{mean:?}");

    let out = world.desktop(
        "wrong-password",
        &["--rdp-user", "tester", "--screenshot", shot_s],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("authentication failed"), "{err}");
}

/// `rac lab --headless` with one tenant (acme): the SP, its CA and the operator's login.
fn lab() -> (Proc, serde_json::Value) {
    let (proc, line) = spawn_until(
        &mut rac(&["lab", "--headless", "--tenants", "1"]),
        "\"sp\"",
        false,
    );
    (proc, serde_json::from_str(&line).expect("ready line"))
}

#[test]
fn xfreerdp_shows_the_lab_desktop_through_rac_connect() {
    if !have(&["Xvfb", "xfreerdp", "import"]) {
        return;
    }
    let (_lab, ready) = lab();
    assert_eq!(ready["tenants"][0], "acme");
    let (sp, ca) = (
        ready["sp"].as_str().expect("sp"),
        ready["ca_cert"].as_str().expect("ca"),
    );
    let user = ready["operator"]["user"].as_str().expect("user");
    let mut connect = rac(&[
        "connect",
        "acme",
        "--service",
        "rdp",
        "--listen",
        "127.0.0.1:0",
        "--sp",
        sp,
        "--ca",
        ca,
        "--user",
        user,
    ]);
    connect.env(
        "RAC_PASSWORD",
        ready["operator"]["password"].as_str().expect("password"),
    );
    let (_connect, line) = spawn_until(&mut connect, "listening on", false);
    let local = last_word(&line);

    let (_x, display) = xvfb();
    let xfreerdp = Command::new("xfreerdp")
        .env("DISPLAY", &display)
        .args([
            &format!("/v:{local}"),
            "/u:operator",
            "/p:lab",
            "/sec:tls",
            "/cert:ignore",
            &format!("/size:{WIDTH}x{HEIGHT}"),
            "/bpp:32",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn xfreerdp");
    let _xfreerdp = Proc(xfreerdp);

    // The lab's title bar, with the tenant's name in it, exactly as the lab draws it (the
    // lab's bitmaps are lossless).
    let expected = lab_picture("acme", &Scribbles::default());
    let title = lab_desktop::title_region("acme");
    let mut seen = None;
    wait_until("the lab desktop in xfreerdp's window", || {
        seen = x_screenshot(&display);
        seen.as_ref()
            .is_some_and(|shot| shot.max_difference(&expected, title) <= 2)
    });
    let shot = seen.expect("screenshot");
    let background = Region {
        x: 600,
        y: 80,
        width: 300,
        height: 10,
    };
    assert!(close_to(
        shot.mean(background),
        lab_desktop::BACKGROUND,
        2.0
    ));
}

#[test]
fn rac_desktop_types_on_the_lab_desktop() {
    let (_lab, ready) = lab();
    let (sp, ca) = (
        ready["sp"].as_str().expect("sp"),
        ready["ca_cert"].as_str().expect("ca"),
    );
    let (user, password) = (
        ready["operator"]["user"].as_str().expect("user"),
        ready["operator"]["password"].as_str().expect("password"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let shot = dir.path().join("lab.png");
    let text = "Typed through the relay: {ok} ~/a_b|c\nsecond line";
    let out = desktop(
        sp,
        ca,
        user,
        password,
        "any",
        &[
            "--rdp-user",
            "operator",
            "--screenshot",
            shot.to_str().expect("utf8"),
            "--type",
            &text.replace('\n', r"\n"),
        ],
    );
    let said = assert_ok(&out);
    assert!(said.contains("1024x768"), "{said}");
    let picture = read_png(&shot);

    let mut scribbles = Scribbles::default();
    scribbles.type_text(text);
    let expected = lab_picture("acme", &scribbles);
    assert_eq!(
        picture.max_difference(&expected, lab_desktop::TYPING),
        0,
        "the typed text as the lab draws it"
    );
    assert_eq!(
        picture.max_difference(&expected, lab_desktop::title_region("acme")),
        0
    );

    // A service that is not a desktop is named as such, promptly.
    let out = desktop(
        sp,
        ca,
        user,
        password,
        "any",
        &[
            "--service",
            "backup",
            "--rdp-user",
            "operator",
            "--screenshot",
            shot.to_str().expect("utf8"),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not answer like an RDP server"), "{err}");
}

/// A one-tenant lab and a desktop client connected to its tenant's `rdp` service through the
/// lab's SP.
async fn lab_desktop() -> (
    rac::lab::Lab,
    rac::net::rdp::client::DesktopSession<rac::net::tls::ClientStream>,
) {
    use rac::net::rdp::client::{self, DesktopLogin, DesktopOptions};
    let lab = rac::lab::Lab::start(rac::lab::LabOptions {
        tenants: 1,
        gateways: 0,
        ..rac::lab::LabOptions::default()
    })
    .await
    .expect("lab");
    let console = rac::net::console::ConsoleClient::new(lab.console_config()).expect("console");
    console.login(&lab.password).await.expect("login");
    let session = console
        .open_session("acme", "rdp", |_, _| {})
        .await
        .expect("session");
    let login = DesktopLogin {
        user: "operator".into(),
        domain: None,
        password: "any".into(),
    };
    let desktop = tokio::time::timeout(
        PATIENCE,
        client::connect(session.stream, "acme", &login, &DesktopOptions::default()),
    )
    .await
    .expect("connected in time")
    .expect("connect");
    (lab, desktop)
}

#[tokio::test]
async fn the_desktop_client_clicks_and_types_and_sees_its_marks() {
    use rac::net::rdp::client::{self, Settled};
    let (lab, mut desktop) = lab_desktop().await;
    let quiet = Duration::from_millis(500);
    assert_ne!(
        desktop
            .settle(quiet, PATIENCE, false)
            .await
            .expect("first picture"),
        Settled::StillChanging
    );
    desktop.click(700, 300).await.expect("click");
    desktop
        .send_keys(&rac::net::rdp::keys::strokes_for_text("xy"))
        .await
        .expect("keys");
    let marked = |d: &client::DesktopSession<_>| d.rgb_at(700, 300) == Some(lab_desktop::MARK);
    let start = Instant::now();
    while !marked(&desktop) {
        assert!(
            start.elapsed() < PATIENCE,
            "the click's mark never came back"
        );
        desktop
            .settle(quiet, PATIENCE, true)
            .await
            .expect("updates");
    }
    // The client measured its own round trip: the click and the keys changed the picture.
    assert!(desktop.round_trip().median().is_some());
    desktop.disconnect().await;
    lab.stop().await;
}

#[tokio::test]
async fn the_lab_desktop_takes_the_size_the_client_asks_for() {
    let (lab, mut desktop) = lab_desktop().await;
    let (own_width, own_height) = (lab_desktop::WIDTH, lab_desktop::HEIGHT);
    assert_eq!((desktop.width(), desktop.height()), (own_width, own_height));
    let quiet = Duration::from_millis(200);
    // Display control opens once the session runs; ask as soon as it has.
    let start = Instant::now();
    while !desktop.request_size(1280, 720).await.expect("ask") {
        assert!(start.elapsed() < PATIENCE, "display control never opened");
        desktop.settle(quiet, quiet, true).await.expect("updates");
    }
    let start = Instant::now();
    while (desktop.width(), desktop.height()) != (1280, 720) {
        assert!(
            start.elapsed() < PATIENCE,
            "the desktop never took 1280x720"
        );
        desktop
            .settle(quiet, PATIENCE, true)
            .await
            .expect("updates");
    }
    // Re-drawn at the new size: the lab's picture at the top left, the surround beyond it.
    let start = Instant::now();
    let surround = rac::net::rdp::server::SURROUND;
    let expected = lab_picture("acme", &Scribbles::default());
    let title = lab_desktop::title_region("acme");
    let redrawn = |d: &rac::net::rdp::client::DesktopSession<_>| {
        d.rgb_at(1279, 719) == Some(surround)
            && d.rgb_at(usize::from(own_width), 0) == Some(surround)
            && (title.y..title.y + title.height).all(|y| {
                (title.x..title.x + title.width)
                    .all(|x| d.rgb_at(x, y) == Some(expected.pixel(x, y)))
            })
    };
    while !redrawn(&desktop) {
        assert!(
            start.elapsed() < PATIENCE,
            "the resized screen was never drawn"
        );
        desktop
            .settle(quiet, PATIENCE, true)
            .await
            .expect("updates");
    }
    // Input lands where the picture shows it, as before.
    desktop.click(700, 300).await.expect("click");
    let start = Instant::now();
    while desktop.rgb_at(700, 300) != Some(lab_desktop::MARK) {
        assert!(
            start.elapsed() < PATIENCE,
            "the click's mark never came back"
        );
        desktop
            .settle(quiet, PATIENCE, true)
            .await
            .expect("updates");
    }
    desktop.disconnect().await;
    lab.stop().await;
}
