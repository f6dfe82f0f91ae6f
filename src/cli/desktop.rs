//! `rac desktop`: a tenant's remote desktop, headless, for scripts and monitoring. Opens a
//! session to the tenant's desktop service through the SP, logs in to the desktop over RDP,
//! optionally types, waits for the screen to settle and writes it to a PNG.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::ClientArgs;
use crate::net::rdp::client::{DesktopLogin, DesktopOptions, Settled};
use crate::net::rdp::keys::{strokes_for_text, unescape};

/// How long a desktop may take to answer RDP's handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A screen that has not changed for this long is taken as settled.
const QUIET: Duration = Duration::from_millis(750);

#[derive(Debug, Args)]
#[command(
    long_about = "Open a tenant's remote desktop (RDP) through the SP, without a window.

The operator logs in to the SP as for `rac connect` (password from RAC_PASSWORD or asked on the
terminal); the desktop's password comes from RAC_RDP_PASSWORD or is asked on the terminal. RDP runs
end to end inside the session, with its own TLS (and NLA when the desktop asks for it).

After connecting, TEXT is typed (if given; `\\n` is Enter, `\\t` Tab), then the command waits until
the screen has not changed for a moment (at most --wait-secs), writes it to the PNG file and
disconnects. It exits non-zero, with the reason, when anything fails: a wrong desktop password
reads \"authentication failed\"."
)]
pub struct DesktopArgs {
    pub tenant: String,
    /// The tenant's desktop service.
    #[arg(long, default_value = crate::net::rdp::SERVICE_NAME)]
    pub service: String,
    #[command(flatten)]
    pub client: ClientArgs,
    /// The user to log in to the desktop as. Its password comes from RAC_RDP_PASSWORD, or is
    /// asked on the terminal.
    #[arg(long)]
    pub rdp_user: String,
    /// The desktop user's domain.
    #[arg(long)]
    pub rdp_domain: Option<String>,
    /// Where to write the picture of the remote screen.
    #[arg(long)]
    pub screenshot: PathBuf,
    /// Text to type once connected (`\n` is Enter).
    #[arg(long = "type", value_name = "TEXT")]
    pub type_text: Option<String>,
    /// Longest wait for the screen to settle, after connecting and after typing.
    #[arg(long, default_value_t = 10)]
    pub wait_secs: u64,
}

fn rdp_password(user: &str, tenant: &str) -> Result<String> {
    if let Ok(pw) = std::env::var("RAC_RDP_PASSWORD") {
        return Ok(pw);
    }
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password(format!("password of {user} on {tenant}'s desktop: "))
            .context("reading the desktop password");
    }
    bail!("no desktop password: set RAC_RDP_PASSWORD (no terminal to ask on)")
}

pub async fn run(args: DesktopArgs) -> Result<ExitCode> {
    let login = DesktopLogin {
        user: args.rdp_user.clone(),
        domain: args.rdp_domain.clone(),
        password: rdp_password(&args.rdp_user, &args.tenant)?,
    };
    let client = args.client.login().await?;
    let session = client
        .open_session(&args.tenant, &args.service, |_, _| {})
        .await
        .with_context(|| format!("opening {} on {}", args.service, args.tenant))?;
    let mut desktop = tokio::time::timeout(
        CONNECT_TIMEOUT,
        crate::net::rdp::client::connect(
            session.stream,
            &args.tenant,
            &login,
            &DesktopOptions::default(),
        ),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "{} on {} did not complete an RDP handshake within {} s (is it a remote desktop?)",
            args.service,
            args.tenant,
            CONNECT_TIMEOUT.as_secs()
        )
    })?
    .with_context(|| format!("connecting to {}'s desktop", args.tenant))?;

    let wait = Duration::from_secs(args.wait_secs);
    let mut settled = desktop.settle(QUIET, wait, false).await?;
    if let (Some(text), Settled::Quiet | Settled::StillChanging) = (&args.type_text, &settled) {
        desktop
            .send_keys(&strokes_for_text(&unescape(text)))
            .await?;
        settled = desktop.settle(QUIET, wait, true).await?;
    }
    match &settled {
        Settled::Ended(why) => bail!("{}'s desktop ended the session: {why}", args.tenant),
        Settled::StillChanging => eprintln!(
            "note: the screen was still changing after {} s; writing it as it is",
            args.wait_secs
        ),
        Settled::Quiet => {}
    }
    write_png(
        &args.screenshot,
        desktop.width(),
        desktop.height(),
        &desktop.to_rgba(),
    )?;
    println!(
        "wrote {} ({}x{}; {:?}; desktop certificate {})",
        args.screenshot.display(),
        desktop.width(),
        desktop.height(),
        desktop.security,
        crate::wire::format_fingerprint(&desktop.certificate.fingerprint)
    );
    desktop.disconnect().await;
    Ok(ExitCode::SUCCESS)
}

/// Writes RGBA pixels as an RGB PNG (a desktop has no transparency).
fn write_png(path: &Path, width: u16, height: u16, rgba: &[u8]) -> Result<()> {
    let rgb: Vec<u8> = rgba
        .chunks_exact(4)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut encoder = png::Encoder::new(
        std::io::BufWriter::new(file),
        u32::from(width),
        u32::from(height),
    );
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder
        .write_header()
        .with_context(|| format!("writing {}", path.display()))?;
    writer
        .write_image_data(&rgb)
        .with_context(|| format!("writing {}", path.display()))?;
    writer
        .finish()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
