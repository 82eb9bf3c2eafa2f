//! The binary's edge: parse the CLI, load the configuration, run a role.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use orderflow::app::{self, Application, Role};
use orderflow::config::{Config, ConfigSource};
use orderflow::shutdown;
use orderflow::telemetry::{self, LogFormat};

/// Exit code for configuration errors, so scripts and probes can tell a bad
/// deployment from a crash.
const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(name = "orderflow", version, about = "Event-driven order pipeline")]
struct Cli {
    /// Configuration file (TOML, or JSON such as appsettings.json).
    #[arg(long, global = true, env = "ORDERFLOW_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// HTTP order API and outbox relay (never a Kafka consumer).
    #[command(visible_aliases = ["api", "producer"])]
    ServeApi,
    /// Kafka consumer group with the typed handlers.
    #[command(visible_aliases = ["worker", "consumer"])]
    RunWorker,
    /// API and worker in one process.
    All,
    /// Run the database migrations, then exit.
    Migrate,
    /// Print the effective configuration (secrets redacted), then exit.
    Config,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let source = match cli.config {
        Some(path) => ConfigSource {
            path,
            required: true,
        },
        None => ConfigSource {
            path: PathBuf::from("config.toml"),
            required: false,
        },
    };
    let config = match Config::load(&source) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("orderflow: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Command::Config = cli.command {
        print!("{}", config.to_redacted_toml());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("orderflow: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "orderflow failed");
            eprintln!("orderflow: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    let role = match command {
        Command::ServeApi => Role::Api,
        Command::RunWorker => Role::Worker,
        Command::All => Role::All,
        Command::Migrate => {
            app::migrate(&config).await?;
            tracing::info!("migrations applied");
            return Ok(());
        }
        Command::Config => return Ok(()),
    };
    let application = Application::build(&config, role).await?;
    let (trigger, shutdown) = shutdown::channel();
    tokio::spawn(async move {
        shutdown::os_signal().await;
        tracing::info!("shutdown requested; draining");
        trigger.trigger();
    });
    application.run(shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}
