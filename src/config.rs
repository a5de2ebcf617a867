//! Typed configuration: environment (and `.env`, loaded by `main`), overridden by flags.
//! Secrets are wrapped in [`Secret`] so that `Debug` never prints them.

use std::fmt;
use std::path::{Path, PathBuf};

use clap::Args;
use clap::builder::BoolishValueParser;

/// A string that never shows itself in `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Listen address.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// Listen port (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 5000)]
    pub port: u16,
    /// `sqlite://path` (created if missing) or `postgres://…`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://data/marcador.db"
    )]
    pub database_url: String,
    /// Directory for local state (the generated JWT secret).
    #[arg(long, env = "DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// HS256 key, at least 32 bytes; generated once into `DATA_DIR/jwt_secret` when unset.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,
    #[arg(long, env = "JWT_TTL_HOURS", default_value_t = 24)]
    pub jwt_ttl_hours: u32,
    /// ElevenLabs key; unset means the built-in simulator.
    #[arg(long, env = "ELEVENLABS_API_KEY", hide_env_values = true)]
    pub elevenlabs_api_key: Option<Secret>,
    #[arg(
        long,
        env = "ELEVENLABS_BASE_URL",
        default_value = "https://api.elevenlabs.io"
    )]
    pub elevenlabs_base_url: String,
    #[arg(long, env = "ELEVENLABS_WEBHOOK_SECRET", hide_env_values = true)]
    pub elevenlabs_webhook_secret: Option<Secret>,
    /// Largest webhook body read (MiB); a post-call transcription with a long
    /// transcript is well under a megabyte. Not the upload limit.
    #[arg(long, env = "WEBHOOK_MAX_BODY_MB", default_value_t = 4)]
    pub webhook_max_body_mb: u64,
    #[arg(long, env = "ELEVENLABS_CACHE_SECS", default_value_t = 30)]
    pub elevenlabs_cache_secs: u64,
    /// Per-request timeout towards ElevenLabs.
    #[arg(long, env = "ELEVENLABS_TIMEOUT_SECS", default_value_t = 20)]
    pub elevenlabs_timeout_secs: u64,
    /// Simulator mode: how long each call step takes.
    #[arg(long, env = "SIMULATOR_STEP_MS", default_value_t = 1000)]
    pub simulator_step_ms: u64,
    /// Simulator mode: keep the last requests it received, for inspection (tests).
    #[arg(long, env = "SIMULATOR_CAPTURE", default_value = "false", value_parser = BoolishValueParser::new())]
    pub simulator_capture: bool,
    /// Simulator mode: post the simulator's webhooks to this service's own
    /// `/api/webhooks/elevenlabs` (signed with `ELEVENLABS_WEBHOOK_SECRET`, or a
    /// random secret generated at start when none is set).
    #[arg(long, env = "SIMULATOR_WEBHOOKS", default_value = "true", value_parser = BoolishValueParser::new())]
    pub simulator_webhooks: bool,
    /// Open sign-up after the first admin.
    #[arg(long, env = "ALLOW_REGISTRATION", default_value = "false", value_parser = BoolishValueParser::new())]
    pub allow_registration: bool,
    #[arg(long, env = "DEFAULT_TIMEZONE", default_value = "America/Bogota")]
    pub default_timezone: String,
    #[arg(long, env = "MAX_UPLOAD_MB", default_value_t = 25)]
    pub max_upload_mb: u64,
    #[arg(long, env = "MAX_CLIENTS_PER_GROUP", default_value_t = 200_000)]
    pub max_clients_per_group: u64,
    /// Cells an imported sheet's rows may hold (each row from column A to
    /// its last cell, header included).
    #[arg(long, env = "MAX_IMPORT_CELLS", default_value_t = 4_000_000)]
    pub max_import_cells: u64,
    /// Imports read at once; the others wait their turn (each may take a few
    /// hundred MB while it is read).
    #[arg(long, env = "MAX_CONCURRENT_IMPORTS", default_value_t = 2)]
    pub max_concurrent_imports: u64,
    /// Seconds between two background syncs; 0 turns the sync worker off.
    #[arg(long, env = "SYNC_INTERVAL_SECS", default_value_t = 15)]
    pub sync_interval_secs: u64,
    #[arg(long, env = "DUPLICATE_WINDOW_SECS", default_value_t = 120)]
    pub duplicate_window_secs: u64,
    /// Comma-separated allowed origins; none means no CORS headers at all.
    #[arg(long, env = "CORS_ORIGINS", default_value = "")]
    pub cors_origins: String,
    /// `pretty` or `json`.
    #[arg(long, env = "LOG_FORMAT", default_value = "pretty")]
    pub log_format: String,
    /// Failed logins allowed per email within the window (per IP: four times as many).
    #[arg(long, env = "LOGIN_MAX_ATTEMPTS", default_value_t = 5)]
    pub login_max_attempts: u32,
    #[arg(long, env = "LOGIN_WINDOW_SECS", default_value_t = 900)]
    pub login_window_secs: u64,
    /// How long in-flight requests may take to finish after SIGTERM/Ctrl-C.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value_t = 20)]
    pub shutdown_timeout_secs: u64,
}

/// Wraps [`Config`] so it can be parsed on its own (tests, defaults).
#[derive(clap::Parser)]
struct Standalone {
    #[command(flatten)]
    config: Config,
}

impl Config {
    /// The configuration from the environment alone, as `marcador` with no flags sees it.
    pub fn from_env() -> Result<Config, clap::Error> {
        use clap::Parser;
        Standalone::try_parse_from(["marcador"]).map(|s| s.config)
    }

    /// Largest HTTP body accepted: a base64 file of one and a half times
    /// `MAX_UPLOAD_MB` plus 1 MiB for the JSON around it. The margin lets a file
    /// somewhat over the limit reach the import, whose answer names its size.
    pub fn body_limit_bytes(&self) -> usize {
        let file = self.max_upload_mb as usize * 1024 * 1024;
        (file + file / 2).div_ceil(3) * 4 + 1024 * 1024
    }

    /// Largest webhook body, in bytes (at least 1 MiB).
    pub fn webhook_body_limit_bytes(&self) -> usize {
        self.webhook_max_body_mb.max(1) as usize * 1024 * 1024
    }

    pub fn cors_origin_list(&self) -> Vec<String> {
        self.cors_origins
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The configured webhook secret, if it is not blank.
    pub fn webhook_secret(&self) -> Option<Secret> {
        self.elevenlabs_webhook_secret
            .clone()
            .filter(|s| !s.expose().trim().is_empty())
    }

    pub fn simulator_mode(&self) -> bool {
        self.elevenlabs_api_key
            .as_ref()
            .is_none_or(|k| k.expose().trim().is_empty())
    }

    /// The JWT key: the configured one, else the one kept in `DATA_DIR/jwt_secret`,
    /// else a new random one written there with mode 0600.
    pub fn resolve_jwt_secret(&self) -> anyhow::Result<Secret> {
        let secret = match &self.jwt_secret {
            Some(secret) => secret.clone(),
            None => load_or_create_secret(&self.data_dir.join("jwt_secret"))?,
        };
        if secret.expose().len() < 32 {
            anyhow::bail!("JWT_SECRET must be at least 32 bytes long");
        }
        Ok(secret)
    }
}

fn load_or_create_secret(path: &Path) -> anyhow::Result<Secret> {
    use anyhow::Context;
    use rand::RngCore;

    if let Ok(text) = std::fs::read_to_string(path) {
        return Ok(Secret(text.trim().to_owned()));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut bytes = [0u8; 48];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(path, &text).with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(path = %path.display(), "generated a new JWT secret");
    Ok(Secret(text))
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_never_printed() {
        let secret = Secret::new("super-secret-value");
        assert_eq!(format!("{secret:?}"), "Secret(***)");
    }

    #[test]
    fn body_limit_fits_a_base64_file_of_the_maximum_size() {
        let mut config = Config::from_env().expect("defaults parse");
        config.max_upload_mb = 25;
        let base64_len = (25 * 1024 * 1024usize).div_ceil(3) * 4;
        assert!(config.body_limit_bytes() > base64_len);
    }

    #[test]
    fn short_jwt_secret_is_refused() {
        let mut config = Config::from_env().expect("defaults parse");
        config.jwt_secret = Some(Secret::new("short"));
        assert!(config.resolve_jwt_secret().is_err());
    }

    #[test]
    fn generated_secret_is_kept_private_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::from_env().expect("defaults parse");
        config.jwt_secret = None;
        config.data_dir = dir.path().to_path_buf();
        let first = config.resolve_jwt_secret().expect("generated");
        let second = config.resolve_jwt_secret().expect("reloaded");
        assert_eq!(first, second);
        assert!(first.expose().len() >= 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("jwt_secret"))
                .expect("file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
