//! The `marcador` command: `serve` (default), `migrate`, `create-user`.

use clap::{Parser, Subcommand};

use marcador::app::{Application, shutdown_signal};
use marcador::auth::hash_password;
use marcador::config::{Config, Secret};
use marcador::elevenlabs::simulator::{Simulator, SimulatorConfig};
use marcador::http::auth::{validate_email, validate_password, validate_username};
use marcador::store::{self, NewUser, Role, RolePolicy};

#[derive(Parser)]
#[command(
    name = "marcador",
    version,
    about = "Outbound AI voice-call campaigns on ElevenLabs"
)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Create a user (for example the first admin) and exit.
    CreateUser {
        #[arg(long)]
        email: String,
        #[arg(long)]
        username: String,
        #[arg(long, env = "MARCADOR_NEW_USER_PASSWORD", hide_env_values = true)]
        password: String,
        #[arg(long, default_value = "user")]
        role: String,
    },
    /// Serve only the ElevenLabs simulator (API.md §11), on 127.0.0.1.
    SimulateElevenlabs {
        #[arg(long, default_value_t = 5055)]
        port: u16,
        /// Accept only this key (default: any non-empty key).
        #[arg(long, hide_env_values = true)]
        api_key: Option<String>,
        /// Post signed webhooks for finished calls here.
        #[arg(long, requires = "webhook_secret")]
        webhook_url: Option<String>,
        #[arg(long, hide_env_values = true)]
        webhook_secret: Option<String>,
        /// Milliseconds per call step.
        #[arg(long, default_value_t = 1000)]
        step_ms: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `.env` fills in what the environment lacks; flags override both.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    marcador::telemetry::init_tracing(&cli.config.log_format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.config).await,
        Command::Migrate => {
            let store = store::connect(&cli.config.database_url).await?;
            let versions = store.applied_migrations().await?;
            println!("migrations applied: {versions:?}");
            Ok(())
        }
        Command::CreateUser {
            email,
            username,
            password,
            role,
        } => create_user(cli.config, email, username, password, role).await,
        Command::SimulateElevenlabs {
            port,
            api_key,
            webhook_url,
            webhook_secret,
            step_ms,
        } => {
            let simulator = Simulator::new(SimulatorConfig {
                capture_requests: false,
                api_key,
                step: std::time::Duration::from_millis(step_ms.max(1)),
                webhook: webhook_url.zip(webhook_secret.map(Secret::new)),
            });
            let addr = simulator
                .spawn(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
                .await?;
            tracing::info!(%addr, step_ms, "ElevenLabs simulator listening");
            shutdown_signal().await;
            Ok(())
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    if config.simulator_mode() {
        tracing::warn!(
            "ELEVENLABS_API_KEY is not set: using the built-in ElevenLabs SIMULATOR. No real calls will be made."
        );
    }
    let app = Application::build(config).await?;
    tracing::info!(addr = %app.local_addr()?, backend = app.state().store.backend(), "marcador listening");
    app.run_until(shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn create_user(
    config: Config,
    email: String,
    username: String,
    password: String,
    role: String,
) -> anyhow::Result<()> {
    let role = Role::parse(&role).ok_or_else(|| anyhow::anyhow!("--role must be admin or user"))?;
    let email = validate_email(&email).map_err(|e| anyhow::anyhow!(e.message.to_string()))?;
    let username =
        validate_username(&username).map_err(|e| anyhow::anyhow!(e.message.to_string()))?;
    validate_password(&password).map_err(|e| anyhow::anyhow!(e.message.to_string()))?;
    let store = store::connect(&config.database_url).await?;
    let new = NewUser {
        username,
        email,
        password_hash: hash_password(password).await?,
        first_name: None,
        last_name: None,
    };
    let user = store
        .create_user(new, RolePolicy::Fixed(role), None)
        .await
        .map_err(|e| match e {
            store::StoreError::UniqueViolation => {
                anyhow::anyhow!("that email or username is already registered")
            }
            other => other.into(),
        })?;
    println!("{}", serde_json::to_string_pretty(&user)?);
    Ok(())
}
