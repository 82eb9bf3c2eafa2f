//! The binary's edge: parse the CLI, load the configuration, run a role.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use orderflow::app::{self, Application, Role};
use orderflow::config::{Config, ConfigSource, Uses};
use orderflow::dlq::{self as dead_letters, Selection};
use orderflow::reconciler::{self, Redrive};
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
    /// Inspect and re-drive the dead-letter topic.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// The fleet admin, through a running API (`Admin.Enabled`).
    Admin {
        /// The API's base URL.
        #[arg(
            long,
            env = "ORDERFLOW_ADMIN_URL",
            default_value = "http://127.0.0.1:8080"
        )]
        url: String,
        /// A bearer token with the `admin` scope.
        #[arg(long, env = "ORDERFLOW_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[command(subcommand)]
        action: AdminAction,
    },
    /// List the orders stuck waiting for an event that was lost, and
    /// publish that event again (with its original id) through the outbox.
    Reconcile {
        /// Only list them.
        #[arg(long)]
        dry_run: bool,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// Stuck means unchanged for this long (default:
        /// Reconcile.StuckAfterSeconds).
        #[arg(long, value_name = "SECONDS")]
        stuck_after_seconds: Option<u64>,
    },
}

#[derive(Subcommand)]
enum AdminAction {
    /// Every worker instance: its partitions, workers, lag, last activity.
    Instances {
        /// The API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Set every instance's worker count, or `auto` to give it back to the
    /// lag balancer.
    Workers {
        /// A count within Worker.MinWorkers..=MaxWorkers, or `auto`.
        count: String,
    },
    /// Make one instance (or every one) leave the group and rejoin.
    Restart {
        /// The instance, as `instances` names it; every one without it.
        #[arg(long)]
        instance: Option<String>,
    },
    /// Move the group's committed offsets (each instance moves the
    /// partitions it holds).
    Offsets {
        /// `earliest`, `latest` or an RFC 3339 time.
        #[arg(long)]
        to: String,
        /// Partitions (repeatable); all without.
        #[arg(long = "partition")]
        partitions: Vec<i32>,
        /// Needed with `latest`: every event not yet handled is skipped.
        #[arg(long)]
        confirm: bool,
    },
    /// Stop every worker fetching (the group and assignments stay).
    Pause,
    /// Let every worker fetch again.
    Resume,
}

#[derive(Subcommand)]
enum DlqAction {
    /// List the dead-lettered messages with their errors.
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-publish dead-lettered messages to the main topic.
    #[command(group = clap::ArgGroup::new("which").required(true))]
    Replay {
        /// The ce_id of a message to replay (repeatable).
        #[arg(long = "event-id", group = "which")]
        event_ids: Vec<String>,
        /// Replay every dead-lettered message.
        #[arg(long, group = "which")]
        all: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = telemetry::init(cli.log_format);
    let code = run_command(cli);
    // Outside the runtime: the exporter's flush blocks.
    telemetry.shutdown();
    code
}

fn run_command(cli: Cli) -> ExitCode {
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
    // Each role's pods are given only the secrets that role uses: the
    // migrate Job starts without the token values, the SASL credentials and
    // the Service Bus connection string, the API without the last.
    let uses = match &cli.command {
        Command::ServeApi => Uses::API,
        Command::RunWorker => Uses::WORKER,
        Command::All => Uses::ALL,
        Command::Dlq { .. } => Uses::KAFKA,
        Command::Migrate | Command::Config | Command::Reconcile { .. } | Command::Admin { .. } => {
            Uses::NOTHING
        }
    };
    // The admin client talks to a running API: it needs no configuration.
    if let Command::Admin { url, token, action } = cli.command {
        return block_on_runtime(admin(&url, token.as_deref(), action));
    }
    let loaded = Config::load(&source).and_then(|c| c.ready_for(uses).map(|()| c));
    let config = match loaded {
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
    let result = runtime.block_on(run(cli.command, config));
    // Everything that must finish (drain, commit, flush) was awaited inside
    // `run`; a blocking call still waiting on an unreachable broker (a
    // metadata request with its own timeout) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
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
        Command::Dlq { action } => return dlq(action, &config).await,
        Command::Admin { url, token, action } => {
            return admin(&url, token.as_deref(), action).await
        }
        Command::Reconcile {
            dry_run,
            json,
            stuck_after_seconds,
        } => {
            let stuck_after = stuck_after_seconds
                .map(std::time::Duration::from_secs)
                .unwrap_or(config.reconcile.stuck_after);
            return reconcile(&config, stuck_after, dry_run, json).await;
        }
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

async fn dlq(action: DlqAction, config: &Config) -> anyhow::Result<()> {
    match action {
        DlqAction::List { json } => {
            let letters = dead_letters::list(config).await?;
            for l in &letters {
                if json {
                    println!("{}", serde_json::to_string(l)?);
                } else {
                    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
                    println!(
                        "{}/{}\t{}\t{}\tattempts={}\tfailed={}\t{}",
                        l.partition,
                        l.offset,
                        show(&l.event_id),
                        show(&l.event_type),
                        show(&l.attempts),
                        show(&l.failed_at),
                        show(&l.error)
                    );
                }
            }
            if !json {
                eprintln!("{} dead-lettered message(s)", letters.len());
            }
        }
        DlqAction::Replay { event_ids, all } => {
            let selection = if all {
                Selection::All
            } else {
                Selection::EventIds(event_ids)
            };
            let n = dead_letters::replay_selected(config, &selection).await?;
            println!("replayed {n} message(s)");
        }
    }
    Ok(())
}

async fn reconcile(
    config: &Config,
    stuck_after: std::time::Duration,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<()> {
    let store = app::migrate(config).await?;
    let unchanged_since = reconciler::unchanged_since(stuck_after);
    let redrive = if dry_run {
        Redrive::Nothing
    } else {
        Redrive::All
    };
    let findings = reconciler::pass(
        &store,
        &config.kafka.orders.consumer_group,
        unchanged_since,
        config.reconcile.batch_size,
        redrive,
    )
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&findings)?);
        return Ok(());
    }
    for f in &findings {
        println!(
            "{}\t{}\tsince {}\t{} {}\tre-driven before: {}{}",
            f.order_id,
            f.status,
            f.since.to_rfc3339(),
            f.event_type,
            f.event_id,
            f.redrives,
            if f.redriven { "\tre-driven now" } else { "" }
        );
    }
    let redriven = findings.iter().filter(|f| f.redriven).count();
    eprintln!(
        "{} stuck order(s), {redriven} re-driven{}",
        findings.len(),
        if redriven > 0 {
            "; the relay of a running serve-api or run-worker publishes them"
        } else {
            ""
        }
    );
    Ok(())
}

/// Runs `future` on a runtime of its own; the exit code says how it ended.
fn block_on_runtime(future: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let outcome = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(future));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orderflow: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One call of the admin API: its JSON answer, or the problem's detail.
async fn admin_call(
    url: &str,
    token: Option<&str>,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", url.trim_end_matches('/')))
        .timeout(std::time::Duration::from_secs(30));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status();
    let body: serde_json::Value = response.json().await?;
    if !status.is_success() {
        anyhow::bail!(
            "{status}: {} {}",
            body["detail"]
                .as_str()
                .or(body["title"].as_str())
                .unwrap_or(""),
            body.get("errors")
                .map(|e| e.to_string())
                .unwrap_or_default()
        );
    }
    Ok(body)
}

async fn admin(url: &str, token: Option<&str>, action: AdminAction) -> anyhow::Result<()> {
    let (path, body) = match action {
        AdminAction::Instances { json } => return list_instances(url, token, json).await,
        AdminAction::Workers { count } => {
            let count =
                match count.trim() {
                    "auto" => None,
                    n => Some(n.parse::<usize>().map_err(|_| {
                        anyhow::anyhow!("{n:?} is neither a worker count nor `auto`")
                    })?),
                };
            ("/admin/api/workers", serde_json::json!({ "count": count }))
        }
        AdminAction::Restart { instance } => (
            "/admin/api/restart",
            serde_json::json!({ "instance": instance }),
        ),
        AdminAction::Offsets {
            to,
            partitions,
            confirm,
        } => (
            "/admin/api/offsets",
            serde_json::json!({
                "to": to,
                "partitions": (!partitions.is_empty()).then_some(partitions),
                "confirm": confirm,
            }),
        ),
        AdminAction::Pause => ("/admin/api/pause", serde_json::json!({})),
        AdminAction::Resume => ("/admin/api/resume", serde_json::json!({})),
    };
    let answer = admin_call(url, token, reqwest::Method::POST, path, Some(body)).await?;
    println!("{answer}");
    Ok(())
}

async fn list_instances(url: &str, token: Option<&str>, json: bool) -> anyhow::Result<()> {
    let body = admin_call(
        url,
        token,
        reqwest::Method::GET,
        "/admin/api/instances",
        None,
    )
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    let instances = body.as_array().cloned().unwrap_or_default();
    for i in &instances {
        println!(
            "{}\t{}\tpartitions={}\tworkers={}\tpaused={}\thandled={}\tlast seen {}",
            i["instance"].as_str().unwrap_or("?"),
            i["state"].as_str().unwrap_or("?"),
            i["partitions"],
            i["workers"],
            i["paused"],
            i["handled"],
            i["lastSeen"].as_str().unwrap_or("?"),
        );
    }
    eprintln!("{} instance(s)", instances.len());
    Ok(())
}
