//! The `microhost` command: parse arguments, load configuration, call the library.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use microhost::admin::client::AdminClient;
use microhost::config::Manifest;
use microhost::{ADMIN_TOKEN_FILE, HostConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "microhost",
    version,
    about = "Run a whole microservice system of WebAssembly components in one process"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the host: the gateway, the admin API and every service of the manifest.
    Serve {
        /// The deployment manifest.
        #[arg(
            long,
            default_value = "registry/microhost.toml",
            conflicts_with = "component"
        )]
        manifest: PathBuf,
        /// Serve this one component on `/` as service `app`, without a manifest (like
        /// `wasmtime serve` or `spin up --from`).
        #[arg(long)]
        component: Option<PathBuf>,
        /// Address of the gateway (public traffic).
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: SocketAddr,
        /// Address of the admin API. A non-loopback address requires a token.
        #[arg(long, default_value = "127.0.0.1:3100")]
        admin_listen: SocketAddr,
        /// Directory for state (sled), the precompiled-component cache and a generated
        /// admin token.
        #[arg(long, default_value = ".microhost")]
        data_dir: PathBuf,
        /// Directory for precompiled components [default: <data-dir>/cache].
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Seconds a client has to send a request's headers.
        #[arg(long, default_value_t = 10)]
        header_timeout_secs: u64,
        /// Seconds a client has to send a request's whole body (more: 408, connection
        /// closed).
        #[arg(long, default_value_t = 30)]
        body_timeout_secs: u64,
        /// Bytes a second a request body must average once its grace period is over
        /// (less: 408, connection closed); 0 turns the check off.
        #[arg(long, default_value_t = 240)]
        min_body_rate: u64,
        /// Seconds a request body may take before --min-body-rate applies.
        #[arg(long, default_value_t = 5)]
        body_rate_grace_secs: u64,
        /// Seconds a connection may stay open with no request in flight (h2, and HTTP/1
        /// keep-alive, which the header timeout bounds too).
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
        idle_timeout_secs: u64,
        /// Most concurrent streams on one HTTP/2 connection.
        #[arg(long, default_value_t = 100)]
        max_concurrent_streams: u32,
        /// Seconds shutdown waits for in-flight requests.
        #[arg(long, default_value_t = 30)]
        shutdown_grace_secs: u64,
        /// Re-apply the manifest whenever it, or a component file it names, changes.
        #[arg(long, conflicts_with = "component")]
        watch: bool,
        /// Most open gateway connections; more are closed on accept.
        #[arg(long, default_value_t = 10_000)]
        max_connections: usize,
        /// Most open gateway connections from one client address (IPv6: one /64); more
        /// are closed on accept.
        #[arg(long, default_value_t = 256, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        max_connections_per_ip: usize,
        /// Most component instances alive at once, across services (sizes the pooling
        /// allocator's reservation of address space: about 8 GiB of virtual memory each).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        max_instances: u32,
        /// Serve the gateway over TLS with this PEM certificate chain (needs --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Make the running host match its manifest file again: add, remove and reconfigure
    /// services, and deploy components that changed, without a restart.
    Apply {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Deploy a component as a new version of a service (without restart): stored,
    /// health-checked, then made active (or the canary).
    Deploy {
        /// The service to deploy to.
        service: String,
        /// The component (.wasm) to deploy.
        file: PathBuf,
        /// Version label [default: the first 12 hex digits of the file's sha256].
        #[arg(long)]
        version: Option<String>,
        /// Make it a canary that gets this percentage of calls (1-100) instead of
        /// making it active.
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=100), conflicts_with = "store_only")]
        canary: Option<u8>,
        /// Only store the version (for a later `activate` or `canary`).
        #[arg(long)]
        store_only: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the stored versions of a service and their roles.
    Versions {
        service: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make a stored version the active one (after its health check).
    Activate {
        service: String,
        version: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Send a percentage of calls to a stored version; `--weight 0` ends the canary.
    Canary {
        service: String,
        version: String,
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
        weight: u8,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make the canary the active version.
    Promote {
        service: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// End the canary, or (without one) go back to the previously active version.
    Rollback {
        service: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show a service's versions, weights, health and in-flight requests (all services
    /// without a name).
    Status {
        service: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show a service's deployment history.
    History {
        service: String,
        /// Show entries after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show the last lines a service's guests wrote to stdout and stderr, each tagged
    /// with the version, the stream and the request id; `--follow` keeps printing new ones.
    Logs {
        service: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Keep printing lines as they are written (until interrupted).
        #[arg(long, short = 'f')]
        follow: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the services, their routes and versions (the catalog).
    Services {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the topics with their lengths and each subscriber's lag and dead letters.
    Topics {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show the dead letters of a subscription.
    DeadLetters {
        service: String,
        topic: String,
        /// Show dead letters after this sequence number.
        #[arg(long)]
        after: Option<u64>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Send a subscription's dead letters back to it for redelivery.
    Redrive {
        service: String,
        topic: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Move a subscription's cursor: it receives every event from the offset again.
    Replay {
        service: String,
        topic: String,
        /// Offset in the topic's log to deliver from.
        #[arg(long)]
        from: u64,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// How the CLI finds and authenticates to a running host.
#[derive(Debug, clap::Args)]
struct AdminArgs {
    /// URL of the admin API.
    #[arg(
        long = "admin",
        env = "MICROHOST_ADMIN_URL",
        default_value = "http://127.0.0.1:3100"
    )]
    url: String,
    /// The host's data directory, where a generated admin token is found when
    /// MICROHOST_ADMIN_TOKEN is not set.
    #[arg(long, default_value = ".microhost")]
    data_dir: PathBuf,
}

impl AdminArgs {
    fn client(&self) -> anyhow::Result<AdminClient> {
        let token = match std::env::var("MICROHOST_ADMIN_TOKEN") {
            Ok(token) if !token.is_empty() => token,
            _ => {
                let path = self.data_dir.join(ADMIN_TOKEN_FILE);
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "no admin token: set MICROHOST_ADMIN_TOKEN, or point --data-dir at \
                             the host's data directory (could not read {path:?})"
                        )
                    })?
                    .trim()
                    .to_string()
            }
        };
        AdminClient::new(&self.url, token)
    }
}

fn main() -> ExitCode {
    // Log lines (the access log's among them) go through a channel to one writer thread
    // that writes them in batches, so a request never waits on stderr. Lossless: when
    // the channel is full, loggers wait rather than drop lines. The guard flushes what
    // is left when `main` returns.
    let (writer, _flush_on_exit) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("microhost-log")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,cranelift_codegen=warn,wasmtime=warn".into()),
        )
        .with_writer(writer)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            manifest,
            component,
            listen,
            admin_listen,
            data_dir,
            cache_dir,
            header_timeout_secs,
            body_timeout_secs,
            min_body_rate,
            body_rate_grace_secs,
            idle_timeout_secs,
            max_concurrent_streams,
            shutdown_grace_secs,
            watch,
            max_connections,
            max_connections_per_ip,
            max_instances,
            tls_cert,
            tls_key,
        } => {
            let manifest = match component {
                Some(file) => Manifest::single_component(&file)?,
                None => Manifest::load(&manifest)?,
            };
            let admin_token = std::env::var("MICROHOST_ADMIN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
                .or_else(|| manifest.admin.token.clone());
            let mut config = HostConfig::new(manifest);
            config.max_instances = max_instances;
            config.listen = listen;
            config.admin_listen = admin_listen;
            config.data_dir = data_dir;
            config.cache_dir = cache_dir;
            config.admin_token = admin_token;
            config.jwt_secret = std::env::var("MICROHOST_JWT_SECRET")
                .ok()
                .filter(|s| !s.is_empty());
            config.limits.header_read_timeout = std::time::Duration::from_secs(header_timeout_secs);
            config.limits.body_read_timeout = std::time::Duration::from_secs(body_timeout_secs);
            config.limits.min_body_rate = min_body_rate;
            config.limits.body_rate_grace = std::time::Duration::from_secs(body_rate_grace_secs);
            config.limits.idle_timeout = std::time::Duration::from_secs(idle_timeout_secs);
            config.limits.max_concurrent_streams = max_concurrent_streams;
            config.limits.shutdown_grace = std::time::Duration::from_secs(shutdown_grace_secs);
            config.watch = watch;
            config.limits.max_connections = max_connections;
            config.limits.max_connections_per_ip = max_connections_per_ip;
            config.tls = tls_cert
                .zip(tls_key)
                .map(|(cert, key)| microhost::TlsFiles { cert, key });
            let running = microhost::start(config).await?;
            let trigger = running.shutdown_trigger();
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("shutting down: finishing in-flight requests");
                let _ = trigger.send(true);
            });
            running.wait().await;
            tracing::info!("stopped");
            Ok(())
        }
        Command::Deploy {
            service,
            file,
            version,
            canary,
            store_only,
            admin,
        } => {
            let mut query = Vec::new();
            if let Some(version) = version {
                query.push(("version", label(&version)));
            }
            if let Some(weight) = canary {
                query.push(("canary", weight.to_string()));
            }
            if store_only {
                query.push(("activate", "false".to_string()));
            }
            let answer = admin
                .client()?
                .deploy(&service, &file, &query)
                .await
                .with_context(|| format!("deploying {file:?} to service {service:?} failed"))?;
            print(answer)
        }
        Command::Apply { admin } => print(admin.client()?.post("/admin/apply").await?),
        Command::Versions { service, admin } => print(
            admin
                .client()?
                .get(&format!("/admin/services/{service}/versions"))
                .await?,
        ),
        Command::Activate {
            service,
            version,
            admin,
        } => print(
            admin
                .client()?
                .post(&format!(
                    "/admin/services/{service}/activate?version={}",
                    label(&version)
                ))
                .await?,
        ),
        Command::Canary {
            service,
            version,
            weight,
            admin,
        } => print(
            admin
                .client()?
                .post(&format!(
                    "/admin/services/{service}/canary?version={}&weight={weight}",
                    label(&version)
                ))
                .await?,
        ),
        Command::Promote { service, admin } => print(
            admin
                .client()?
                .post(&format!("/admin/services/{service}/promote"))
                .await?,
        ),
        Command::Rollback { service, admin } => print(
            admin
                .client()?
                .post(&format!("/admin/services/{service}/rollback"))
                .await?,
        ),
        Command::Status { service, admin } => {
            let path = match service {
                Some(service) => format!("/admin/services/{service}"),
                None => "/admin/services".to_string(),
            };
            print(admin.client()?.get(&path).await?)
        }
        Command::History {
            service,
            after,
            limit,
            admin,
        } => print(
            admin
                .client()?
                .get(&format!(
                    "/admin/services/{service}/history?after={after}&limit={limit}"
                ))
                .await?,
        ),
        Command::Logs {
            service,
            limit,
            follow,
            admin,
        } => {
            let client = admin.client()?;
            let path = format!("/admin/services/{service}/logs?limit={limit}");
            if follow {
                client
                    .follow(&format!("{path}&follow=true"), |event, data| match event {
                        "line" => match serde_json::from_str(data) {
                            Ok(line) => println!("{}", log_line(&line)),
                            Err(_) => println!("{data}"),
                        },
                        "lagged" => eprintln!("({data} lines skipped: the reader fell behind)"),
                        _ => {}
                    })
                    .await
            } else {
                let answer = client.get(&path).await?;
                for line in answer["lines"].as_array().into_iter().flatten() {
                    println!("{}", log_line(line));
                }
                Ok(())
            }
        }
        Command::Services { admin } => print(admin.client()?.get("/admin/services").await?),
        Command::Topics { admin } => print(admin.client()?.get("/admin/topics").await?),
        Command::DeadLetters {
            service,
            topic,
            after,
            limit,
            admin,
        } => {
            let mut path =
                format!("/admin/subscriptions/{service}/{topic}/dead-letters?limit={limit}");
            if let Some(after) = after {
                path.push_str(&format!("&after={after}"));
            }
            print(admin.client()?.get(&path).await?)
        }
        Command::Redrive {
            service,
            topic,
            admin,
        } => print(
            admin
                .client()?
                .post(&format!("/admin/subscriptions/{service}/{topic}/redrive"))
                .await?,
        ),
        Command::Replay {
            service,
            topic,
            from,
            admin,
        } => print(
            admin
                .client()?
                .post(&format!(
                    "/admin/subscriptions/{service}/{topic}/replay?from={from}"
                ))
                .await?,
        ),
    }
}

/// A version label in a query string (`+` would read as a space).
fn label(version: &str) -> String {
    version
        .replace('%', "%25")
        .replace('+', "%2B")
        .replace('&', "%26")
}

/// `TIME SERVICE@VERSION STREAM REQUEST-ID: LINE`, as `microhost logs` prints a line.
fn log_line(line: &serde_json::Value) -> String {
    let field = |name: &str| line[name].as_str().unwrap_or("-").to_string();
    format!(
        "{} {}@{} {} {}: {}",
        field("time"),
        field("service"),
        field("version"),
        field("stream"),
        field("request_id"),
        field("line")
    )
}

fn print(answer: serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
