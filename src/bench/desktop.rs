//! `rac bench --only desktop`: remote desktops through the relay beside the same desktops
//! reached directly.
//!
//! Two desktops are served by the RDP server the lab uses (`net::rdp::server`) on loopback
//! ports in this process; the bench tenant offers the same ports as services, so a session
//! reaches exactly the server a direct TCP connection does. The console side (RDP client,
//! and for the relay the session's TLS) runs on a thread of its own, whose CPU time is read
//! from `/proc/thread-self`. Memory and idle CPU are read against a `rac lab --headless`
//! child, so that no desktop server shares the measured process.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::load;
use super::procs;
use super::relay::median;
use super::report::{Check, Report};
use super::world::{BENCH_TENANT, World};
use crate::net::console::{ConsoleClient, ConsoleConfig, ConsoleKeys};
use crate::net::dial::Route;
use crate::net::rdp::client::{self, DesktopEvent, DesktopLogin, DesktopOptions, DesktopSession};
use crate::net::rdp::server::{BYTES_PER_PIXEL, Desktop, DesktopInput};
use crate::net::splice::Counted;
use crate::net::tls::Trust;

/// The bench tenant's services for the two desktops.
pub const INPUT_SERVICE: &str = "rdp-input";
pub const STREAM_SERVICE: &str = "rdp-stream";

/// A still grey screen whose top-left square turns white or black with each key press: a
/// key is timed until the console has decoded the square's new colour.
pub struct InputDesktop {
    presses: AtomicU64,
    changes: watch::Sender<u64>,
}

const INPUT_SIZE: (u16, u16) = (1024, 768);
const SQUARE: usize = 64;

impl InputDesktop {
    pub fn new() -> Arc<Self> {
        Arc::new(InputDesktop {
            presses: AtomicU64::new(0),
            changes: watch::channel(0).0,
        })
    }
}

impl Desktop for InputDesktop {
    fn size(&self) -> (u16, u16) {
        INPUT_SIZE
    }

    fn draw(&self, _now_unix_secs: u64, pixels: &mut [u8]) {
        let lit = self.presses.load(Ordering::Acquire) % 2 == 1;
        let width = usize::from(INPUT_SIZE.0);
        for (i, pixel) in pixels.chunks_exact_mut(BYTES_PER_PIXEL).enumerate() {
            let in_square = i % width < SQUARE && i / width < SQUARE;
            let v = match (in_square, lit) {
                (true, true) => 0xff,
                (true, false) => 0,
                (false, _) => 0x80,
            };
            pixel.copy_from_slice(&[v, v, v, 0xff]);
        }
    }

    fn input(&self, event: DesktopInput) {
        if let DesktopInput::Key { pressed: true, .. } = event {
            self.presses.fetch_add(1, Ordering::AcqRel);
            self.changes.send_modify(|n| *n += 1);
        }
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// No clock: nothing changes but the square.
    fn refresh(&self) -> Duration {
        Duration::from_secs(3600)
    }
}

/// A 1920x1080 screen on which every pixel changes with every frame (colour bands moving
/// at different speeds per channel, so runs are short), drawn at a display's 60 frames/s
/// or, unpaced, as fast as the server sends.
pub struct StreamDesktop {
    frame: AtomicU64,
    /// The pattern, `TILE_EXTRA` pixels wider and taller than the screen: frame `f` is the
    /// screen-sized window at (4f, 2f) mod `TILE_EXTRA`, copied row by row, so the server
    /// sharing the bench's two cores spends little on drawing.
    tile: Vec<u8>,
    /// Microseconds between frames for sessions opened from now on.
    pace_micros: AtomicU64,
    changes: watch::Sender<u64>,
}

pub const STREAM_SIZE: (u16, u16) = (1920, 1080);
const TILE_EXTRA: usize = 256;
const TILE_WIDTH: usize = STREAM_SIZE.0 as usize + TILE_EXTRA;

/// A display's refresh: what a desktop server sends at most.
const DISPLAY_PACE: Duration = Duration::from_micros(1_000_000 / 60);
/// As fast as the server can: a frame whenever it is ready for one.
const UNPACED: Duration = Duration::from_millis(1);

impl StreamDesktop {
    pub fn new() -> Arc<Self> {
        let tile_height = usize::from(STREAM_SIZE.1) + TILE_EXTRA;
        // Each channel moves by a different step per frame (4, 2, 6), so every pixel
        // changes every frame and runs of equal pixels stay short.
        let tile = (0..tile_height)
            .flat_map(|y| (0..TILE_WIDTH).map(move |x| [x as u8, y as u8, (x + y) as u8, 0xff]))
            .flatten()
            .collect();
        Arc::new(StreamDesktop {
            frame: AtomicU64::new(0),
            tile,
            pace_micros: AtomicU64::new(DISPLAY_PACE.as_micros() as u64),
            changes: watch::channel(0).0,
        })
    }

    /// The time between frames for the sessions opened after this call.
    pub fn set_pace(&self, pace: Duration) {
        self.pace_micros
            .store(pace.as_micros() as u64, Ordering::Relaxed);
    }
}

impl Desktop for StreamDesktop {
    fn size(&self) -> (u16, u16) {
        STREAM_SIZE
    }

    fn draw(&self, now_unix_secs: u64, pixels: &mut [u8]) {
        let frame = self.frame(now_unix_secs);
        let n = pixels.len().min(frame.len());
        pixels[..n].copy_from_slice(&frame[..n]);
    }

    fn frame(&self, _now_unix_secs: u64) -> Vec<u8> {
        let f = self.frame.fetch_add(1, Ordering::Relaxed) as usize;
        let (x, y) = ((4 * f) % TILE_EXTRA, (2 * f) % TILE_EXTRA);
        let row_bytes = usize::from(STREAM_SIZE.0) * BYTES_PER_PIXEL;
        let mut pixels = Vec::with_capacity(row_bytes * usize::from(STREAM_SIZE.1));
        for row in y..y + usize::from(STREAM_SIZE.1) {
            let start = (row * TILE_WIDTH + x) * BYTES_PER_PIXEL;
            pixels.extend_from_slice(&self.tile[start..start + row_bytes]);
        }
        pixels
    }

    fn input(&self, _event: DesktopInput) {}

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn refresh(&self) -> Duration {
        Duration::from_micros(self.pace_micros.load(Ordering::Relaxed))
    }
}

/// How much work the section does.
#[derive(Debug, Clone)]
pub struct DesktopOpts {
    /// Key presses timed per route.
    pub presses: usize,
    /// Seconds of full-screen streaming per route and round.
    pub stream_secs: u64,
    /// Rounds, alternating between the routes; the median (or, for key presses, all of
    /// them) counts.
    pub rounds: usize,
    /// Desktops held open for the memory figure.
    pub held: usize,
    /// Seconds over which an idle desktop's CPU is read.
    pub idle_secs: u64,
}

fn login() -> DesktopLogin {
    DesktopLogin {
        user: "bench".into(),
        domain: None,
        password: "bench".into(),
    }
}

/// Runs `work` on a thread of its own with a single-threaded runtime, so that the CPU time
/// that thread reads of itself is the console side's alone.
async fn on_own_thread<T, F>(work: impl FnOnce() -> F + Send + 'static) -> Result<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T>>,
{
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the console's runtime")?
            .block_on(work())
    })
    .await
    .context("the console's thread")?
}

/// Where a desktop is reached from.
#[derive(Clone)]
enum Reach {
    Direct(std::net::SocketAddr),
    Relay(Arc<ConsoleClient>, &'static str),
}

impl Reach {
    /// Opens the desktop, counting the bytes that come in.
    async fn open(
        &self,
        size: (u16, u16),
        read: Arc<AtomicU64>,
    ) -> Result<DesktopSession<Box<dyn crate::net::tls::Stream>>> {
        let stream: Box<dyn crate::net::tls::Stream> = match self {
            Reach::Direct(addr) => {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                Box::new(Counted::both(tcp, read, Arc::new(AtomicU64::new(0))))
            }
            Reach::Relay(console, service) => {
                let session = console
                    .open_session(BENCH_TENANT, service, |_, _| {})
                    .await
                    .map_err(|e| anyhow!("opening the {service} session: {e}"))?;
                Box::new(Counted::both(
                    session.stream,
                    read,
                    Arc::new(AtomicU64::new(0)),
                ))
            }
        };
        let options = DesktopOptions {
            width: size.0,
            height: size.1,
            client_name: "rac-bench".into(),
        };
        client::connect(stream, BENCH_TENANT, &login(), &options)
            .await
            .map_err(|e| anyhow!("RDP: {e}"))
    }
}

/// Reads and handles PDUs until `done` says the screen is as wanted.
async fn until<S>(
    desktop: &mut DesktopSession<S>,
    mut done: impl FnMut(&DesktopSession<S>) -> bool,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    while !done(desktop) {
        let frame = tokio::time::timeout(Duration::from_secs(30), desktop.read_frame())
            .await
            .context("the desktop sent nothing for 30 s")??;
        for event in desktop.handle(frame).await? {
            if let DesktopEvent::Ended(why) = event {
                bail!("the desktop ended the session: {why}");
            }
        }
    }
    Ok(())
}

fn square_lit<S>(desktop: &DesktopSession<S>) -> bool
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    // Any pixel inside the square will do.
    desktop.rgb_at(8, 8).is_some_and(|p| p[0] == 0xff)
}

/// Milliseconds from each key press until its pixels are decoded, sorted.
async fn input_to_pixel(reach: Reach, presses: usize) -> Result<Vec<Duration>> {
    on_own_thread(move || async move {
        let mut desktop = reach.open(INPUT_SIZE, Arc::default()).await?;
        // The first full picture, then a few presses to warm up.
        until(&mut desktop, |d| {
            d.rgb_at(100, 100).is_some_and(|p| p[0] == 0x80)
        })
        .await?;
        let space = |pressed| DesktopInput::Key {
            scancode: 0x39,
            extended: false,
            pressed,
        };
        let mut times = Vec::with_capacity(presses);
        for i in 0..presses + 5 {
            let lit = square_lit(&desktop);
            let started = Instant::now();
            desktop.send_input(&[space(true), space(false)]).await?;
            until(&mut desktop, |d| square_lit(d) != lit).await?;
            if i >= 5 {
                times.push(started.elapsed());
            }
        }
        desktop.disconnect().await;
        times.sort();
        Ok(times)
    })
    .await
}

/// Streams `o.rounds` times from each route, alternating, and takes each figure's median.
async fn streams(direct: &Reach, relay: &Reach, o: &DesktopOpts) -> Result<(Streamed, Streamed)> {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..o.rounds {
        a.push(stream(direct.clone(), o.stream_secs).await?);
        b.push(stream(relay.clone(), o.stream_secs).await?);
    }
    Ok((Streamed::median(a), Streamed::median(b)))
}

/// What a full-screen stream came to.
struct Streamed {
    frames_per_sec: f64,
    mbit_per_sec: f64,
    cpu_ms_per_frame: f64,
}

impl Streamed {
    fn median(runs: Vec<Streamed>) -> Streamed {
        let of = |f: fn(&Streamed) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
        Streamed {
            frames_per_sec: of(|s| s.frames_per_sec),
            mbit_per_sec: of(|s| s.mbit_per_sec),
            cpu_ms_per_frame: of(|s| s.cpu_ms_per_frame),
        }
    }
}

async fn stream(reach: Reach, secs: u64) -> Result<Streamed> {
    on_own_thread(move || async move {
        let read = Arc::new(AtomicU64::new(0));
        let mut desktop = reach.open(STREAM_SIZE, read.clone()).await?;
        let screen = f64::from(STREAM_SIZE.0) * f64::from(STREAM_SIZE.1);
        // Warm up: two whole screens.
        let mut painted = 0.0;
        count_paint(&mut desktop, &mut painted, |p| p >= 2.0 * screen).await?;
        let (cpu0, bytes0, started) = (
            procs::thread_cpu_secs()?,
            read.load(Ordering::Relaxed),
            Instant::now(),
        );
        let mut painted = 0.0;
        let window = Duration::from_secs(secs);
        count_paint(&mut desktop, &mut painted, |_| started.elapsed() >= window).await?;
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = procs::thread_cpu_secs()? - cpu0;
        let bytes = read.load(Ordering::Relaxed) - bytes0;
        desktop.disconnect().await;
        let frames = painted / screen;
        Ok(Streamed {
            frames_per_sec: frames / elapsed,
            mbit_per_sec: bytes as f64 * 8.0 / elapsed / 1e6,
            cpu_ms_per_frame: cpu * 1e3 / frames.max(1e-9),
        })
    })
    .await
}

/// Handles PDUs, adding up the pixels painted, until `stop(painted)`.
async fn count_paint<S>(
    desktop: &mut DesktopSession<S>,
    painted: &mut f64,
    mut stop: impl FnMut(f64) -> bool,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    while !stop(*painted) {
        let frame = tokio::time::timeout(Duration::from_secs(30), desktop.read_frame())
            .await
            .context("the desktop sent nothing for 30 s")??;
        for event in desktop.handle(frame).await? {
            match event {
                DesktopEvent::Painted {
                    left,
                    top,
                    right,
                    bottom,
                } => {
                    *painted += (f64::from(right) - f64::from(left) + 1.0)
                        * (f64::from(bottom) - f64::from(top) + 1.0);
                }
                DesktopEvent::Ended(why) => bail!("the desktop ended the session: {why}"),
                _ => {}
            }
        }
    }
    Ok(())
}

/// A `rac lab --headless` child: desktops served by another process.
struct LabChild {
    child: std::process::Child,
    console: ConsoleConfig,
    password: String,
    tenants: Vec<String>,
}

impl Drop for LabChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_lab(tenants: usize, log: &std::path::Path) -> Result<LabChild> {
    use std::io::BufRead;
    let exe = std::env::current_exe().context("finding the rac executable")?;
    let mut child = std::process::Command::new(exe)
        .args(["lab", "--headless", "--tenants", &tenants.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(log).context("the lab's log")?)
        .spawn()
        .context("starting rac lab --headless")?;
    let stdout = child.stdout.take().context("the lab's stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .context("reading the lab's ready line")?;
    let ready: serde_json::Value = serde_json::from_str(&line)
        .with_context(|| format!("the lab's ready line {line:?} (its log: {})", log.display()))?;
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
    let (Some(sp), Some(ca), Some(user), Some(password)) = (
        text(&ready["sp"]),
        text(&ready["ca_cert"]),
        text(&ready["operator"]["user"]),
        text(&ready["operator"]["password"]),
    ) else {
        bail!("the lab's ready line lacks a field: {line}");
    };
    let tenants = ready["tenants"]
        .as_array()
        .map(|a| a.iter().filter_map(text).collect())
        .unwrap_or_default();
    Ok(LabChild {
        child,
        console: ConsoleConfig {
            route: Route::Direct(sp),
            trust: Trust::CaFile(ca.into()),
            server_name: "localhost".into(),
            user,
            keys: ConsoleKeys::in_memory()?,
        },
        password,
        tenants,
    })
}

/// Memory per open desktop and CPU of idle ones, in a console that holds `held` lab desktops
/// (each with a clock that changes every second).
async fn idle_desktops(lab: &LabChild, held: usize, idle_secs: u64) -> Result<(f64, f64)> {
    let console = ConsoleClient::new(lab.console.clone())?;
    console
        .login(&lab.password)
        .await
        .context("logging in to the lab")?;
    let tenants: Vec<String> = lab.tenants.iter().take(held).cloned().collect();
    if tenants.len() < held {
        bail!("the lab has {} tenants, {held} wanted", tenants.len());
    }
    on_own_thread(move || async move {
        let rss0 = procs::rss_kib(std::process::id())?;
        let mut desktops = Vec::new();
        for tenant in &tenants {
            let session = console
                .open_session(tenant, crate::net::rdp::SERVICE_NAME, |_, _| {})
                .await
                .map_err(|e| anyhow!("opening {tenant}'s desktop: {e}"))?;
            let mut desktop =
                client::connect(session.stream, tenant, &login(), &DesktopOptions::default())
                    .await
                    .map_err(|e| anyhow!("RDP to {tenant}: {e}"))?;
            let mut painted = 0.0;
            let screen = f64::from(desktop.width()) * f64::from(desktop.height());
            count_paint(&mut desktop, &mut painted, |p| p >= screen).await?;
            desktops.push(desktop);
        }
        let rss = procs::rss_kib(std::process::id())?;
        // Idle: each desktop's clock repaints a corner once a second.
        let cpu0 = procs::thread_cpu_secs()?;
        let until = tokio::time::Instant::now() + Duration::from_secs(idle_secs);
        let mut idle = tokio::task::JoinSet::new();
        for mut desktop in desktops {
            idle.spawn(async move {
                let mut painted = 0.0;
                let reading = count_paint(&mut desktop, &mut painted, |_| false);
                match tokio::time::timeout_at(until, reading).await {
                    Ok(Err(e)) => Err(e),
                    _ => Ok(desktop),
                }
            });
        }
        let mut desktops = Vec::new();
        while let Some(joined) = idle.join_next().await {
            desktops.push(joined.context("an idle desktop's task")??);
        }
        let cpu = procs::thread_cpu_secs()? - cpu0;
        for desktop in desktops {
            desktop.disconnect().await;
        }
        let per_desktop_mib = (rss.saturating_sub(rss0)) as f64 / 1024.0 / held as f64;
        let cpu_pct = cpu / idle_secs as f64 * 100.0 / held as f64;
        Ok((per_desktop_mib, cpu_pct))
    })
    .await
}

pub async fn desktop_section(
    world: &World,
    o: &DesktopOpts,
    report: &mut Report,
    progress: impl Fn(&str),
) -> Result<()> {
    // First, while this process has freed no memory that new desktops could reuse unseen.
    progress("desktop: idle desktops of a lab in another process");
    let lab = start_lab(o.held.max(2), &world.dir.path().join("desktop-lab.log"))?;
    let (mib, cpu_pct) = idle_desktops(&lab, o.held, o.idle_secs).await?;
    drop(lab);
    report.add(
        "desktop_console_mib_each",
        "console memory per open 1024x768 desktop",
        "MiB",
        mib,
        None,
        None,
    );
    report.add(
        "desktop_idle_cpu_pct",
        "console CPU per idle desktop (clock ticking)",
        "% of a core",
        cpu_pct,
        None,
        Some(("≤ 1%", Check::AtMost(1.0))),
    );
    let relay = |service| Reach::Relay(world.console.clone(), service);
    progress("desktop: input to pixel");
    // Rounds alternate between the routes, so a slow spell of the machine hits both alike.
    let (mut direct_input, mut relay_input) = (Vec::new(), Vec::new());
    let per_round = o.presses.div_ceil(o.rounds);
    for _ in 0..o.rounds {
        let direct_reach = Reach::Direct(world.input_desktop_addr);
        direct_input.extend(input_to_pixel(direct_reach, per_round).await?);
        relay_input.extend(input_to_pixel(relay(INPUT_SERVICE), per_round).await?);
    }
    direct_input.sort();
    relay_input.sort();
    let q = |t: &[Duration], q: f64| load::quantile_ms(t, q);
    let direct = "the same server directly";
    report.add(
        "desktop_input_p50_ms",
        "desktop key to decoded pixel p50",
        "ms",
        q(&relay_input, 0.5),
        Some((q(&direct_input, 0.5), direct)),
        None,
    );
    report.add(
        "desktop_input_p99_ms",
        "desktop key to decoded pixel p99",
        "ms",
        q(&relay_input, 0.99),
        Some((q(&direct_input, 0.99), direct)),
        None,
    );
    let added = q(&relay_input, 0.5) - q(&direct_input, 0.5);
    report.add(
        "desktop_input_added_p50_ms",
        "desktop: relay's addition to key-to-pixel p50",
        "ms",
        added,
        None,
        Some(("≤ 1 ms", Check::AtMost(1.0))),
    );

    progress("desktop: full-screen stream at 1920x1080, 60 frames/s");
    world.stream_desktop.set_pace(DISPLAY_PACE);
    let direct_reach = Reach::Direct(world.stream_desktop_addr);
    let (direct_stream, relay_stream) = streams(&direct_reach, &relay(STREAM_SERVICE), o).await?;
    progress("desktop: full-screen stream at 1920x1080, unpaced");
    world.stream_desktop.set_pace(UNPACED);
    let (direct_max, relay_max) = streams(&direct_reach, &relay(STREAM_SERVICE), o).await?;
    report.add(
        "desktop_stream_fps",
        "desktop 1080p at 60/s, every pixel changing",
        "frames/s",
        relay_stream.frames_per_sec,
        Some((direct_stream.frames_per_sec, direct)),
        Some(("≥ 90% of direct", Check::RatioAtLeast(0.9))),
    );
    report.add(
        "desktop_stream_fps_floor",
        "desktop 1080p frames/s through the relay",
        "frames/s",
        relay_stream.frames_per_sec,
        None,
        Some(("≥ 30", Check::AtLeast(30.0))),
    );
    report.add(
        "desktop_stream_max_fps",
        "desktop 1080p unpaced, every pixel changing",
        "frames/s",
        relay_max.frames_per_sec,
        Some((direct_max.frames_per_sec, direct)),
        None,
    );
    report.add(
        "desktop_stream_max_mbit",
        "desktop 1080p unpaced bandwidth",
        "Mbit/s",
        relay_max.mbit_per_sec,
        Some((direct_max.mbit_per_sec, direct)),
        None,
    );
    report.add(
        "desktop_stream_mbit",
        "desktop 1080p at 60/s bandwidth",
        "Mbit/s",
        relay_stream.mbit_per_sec,
        Some((direct_stream.mbit_per_sec, direct)),
        None,
    );
    report.add(
        "desktop_cpu_ms_per_frame",
        "console CPU per 1080p frame",
        "ms",
        relay_stream.cpu_ms_per_frame,
        Some((direct_stream.cpu_ms_per_frame, direct)),
        None,
    );

    report.note("desktop_held", o.held);
    Ok(())
}
