//! `zen`: the single binary. `zen serve` runs the platform; the other subcommands administer it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use zen_security::{PeerIdentity, PkiFiles};

use zen::config::{Config, GlobalArgs, ServeArgs};
use zen::ops::commands::{
    ClusterCommand, EventCommand, InviteCommand, MemberCommand, RemediationCommand, SourceCommand,
    TenantCommand, TokenCommand,
};
use zen::ops::Output;
use zen::{server, store, telemetry};

/// jemalloc, with a background thread that returns freed pages (a closed watcher's buffers, a
/// finished burst's) to the system about a second after they are freed, whichever thread
/// freed them; with glibc's malloc the resident size stays near its peak.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start: purge dirty pages after 1 s, from its own thread.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

#[derive(Parser)]
#[command(
    name = "zen",
    version,
    about = "Ingest security events and drive their remediation"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    /// How the operator commands print results (`id`: only the object's id, for scripts).
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC front (mTLS) and the HTTP side.
    Serve(Box<ServeArgs>),
    /// Apply pending database migrations, or report their state.
    Migrate {
        /// Only report applied and pending migrations.
        #[arg(long)]
        status: bool,
    },
    /// Manage the platform PKI.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Inspect the hash-chained audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Manage the JWT signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage local (development) users.
    #[command(subcommand)]
    User(UserCommand),
    /// The reference cluster agent.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Benchmarks that print figures (see docs/BENCHMARKS.md).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The remediation dead-letter queue (see docs/REMEDIATION.md).
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Log in to a Zen (local login) and keep the session for the commands below.
    Login {
        /// Zen's HTTP side.
        #[arg(long, env = "ZEN_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long)]
        username: String,
        /// Read the password from the first line of standard input (otherwise
        /// ZEN_USER_PASSWORD).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Tenants (over the API, as the logged-in person).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// A tenant's members.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Invitations into a tenant.
    #[command(subcommand)]
    Invite(InviteCommand),
    /// A tenant's clusters.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Bootstrap tokens that enroll agents.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Webhook sources.
    #[command(subcommand)]
    Source(SourceCommand),
    /// Remediations: propose, approve, follow.
    #[command(subcommand)]
    Remediation(RemediationCommand),
    /// Stored and live events.
    #[command(subcommand)]
    Event(EventCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List a tenant's dead letters, newest first.
    List {
        #[arg(long)]
        tenant: uuid::Uuid,
        /// Also list dead letters already replayed.
        #[arg(long)]
        all: bool,
    },
    /// Replay a dead letter: its remediation is queued for dispatch again.
    Replay {
        #[arg(long)]
        tenant: uuid::Uuid,
        /// The dead letter's id.
        id: uuid::Uuid,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Durable ingestion over mTLS on SQLite and (with --postgres-url) PostgreSQL, the no-op
    /// sink ceiling, the database's own ceiling, and latency at half the peak rate.
    Ingest {
        #[arg(long, default_value_t = 4)]
        agents: usize,
        #[arg(long, default_value_t = 25_000)]
        events_per_agent: usize,
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// A PostgreSQL server (superuser) on which a scratch database is created and dropped.
        #[arg(long)]
        postgres_url: Option<String>,
        /// Skip SQLite.
        #[arg(long)]
        no_sqlite: bool,
    },
    /// Verified-and-stored webhook deliveries per second through the gateway, per scheme,
    /// against a no-op handler on the same server, with the stored events counted afterwards.
    Webhooks {
        /// Deliveries per scheme (and requests of the no-op ceiling).
        #[arg(long, default_value_t = 20_000)]
        deliveries: usize,
        /// Concurrent keep-alive HTTP/1.1 connections.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, value_enum, default_value_t = BenchDatabase::Both)]
        database: BenchDatabase,
        /// Schemes to measure, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "zen-hmac,standard-webhooks,github,stripe,slack,shopify,generic-hmac,bearer,basic"
        )]
        schemes: Vec<String>,
        /// A PostgreSQL server (superuser) on which a scratch database is created and dropped.
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
        postgres_url: String,
        /// Measure the first scheme once more with this many WebSocket watchers connected
        /// that never read (the slow-consumer drill); 0 skips it.
        #[arg(long, default_value_t = 0)]
        stuck_watchers: usize,
    },
    /// The cost per call of checking a request against its contract's rules (webhook and read
    /// paths), next to the cost of decoding it.
    Validation {
        #[arg(long, default_value_t = 200_000)]
        iterations: u32,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BenchDatabase {
    Sqlite,
    Postgres,
    Both,
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Enroll: trade a bootstrap token and a CSR for a client certificate.
    Bootstrap {
        /// Zen's HTTP side (the gateway), e.g. http://127.0.0.1:8080.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Zen's gRPC front, stored for `zen agent run`.
        #[arg(long, default_value = "https://127.0.0.1:7443")]
        grpc_url: String,
        /// Name the server certificate must carry.
        #[arg(long, default_value = "localhost")]
        server_name: String,
        /// The one-time bootstrap token (or ZEN_BOOTSTRAP_TOKEN).
        #[arg(long, env = "ZEN_BOOTSTRAP_TOKEN", hide_env_values = true)]
        token: String,
        /// Where the agent keeps its identity.
        #[arg(long, default_value = "zen-agent")]
        dir: PathBuf,
    },
    /// Stream events (JSON lines from stdin or --input) to Zen until all are acked.
    Run {
        #[arg(long, default_value = "zen-agent")]
        dir: PathBuf,
        /// A file of JSON lines instead of stdin.
        #[arg(long)]
        input: Option<PathBuf>,
        #[arg(long, default_value_t = 200)]
        batch_size: usize,
        /// Keep the stream open after the input ends, executing remediation commands.
        #[arg(long)]
        follow: bool,
        /// Executable that runs remediation commands: the command as JSON on stdin, a JSON
        /// result on stdout (see docs/REMEDIATION.md). Without it commands are reported failed.
        #[arg(long)]
        exec_hook: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Add a new signing key; it signs from now on, and tokens signed by the previous key keep
    /// verifying until they expire. Running servers pick it up without a restart.
    RotateJwt,
    /// Create an Ed25519 key that signs exported audit segments (for ZEN_AUDIT_SIGNING_KEY).
    AuditKey {
        /// The file to create (PKCS#8, mode 0600); it must not exist.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the public key of the audit signing key, for `zen audit verify --public-key`.
    AuditPublicKey,
    /// Print a new key for ZEN_WEBHOOK_SECRET_KEYS (`<key-id>:<base64 32 bytes>`); to rotate,
    /// put it first in the list and keep the old keys after it (docs/WEBHOOKS.md).
    WebhookKey {
        /// The key's id (1 to 32 characters of [A-Za-z0-9_-]).
        #[arg(long, default_value = "k1")]
        id: String,
    },
    /// Print the legacy HMAC key of one cluster, derived from ZEN_LEGACY_AGENT_KEY, for an agent
    /// that posts to `POST /agent/v1/events`.
    LegacyAgentKey {
        #[arg(long)]
        tenant_id: uuid::Uuid,
        #[arg(long)]
        cluster_id: uuid::Uuid,
        /// The server's legacy agent key.
        #[arg(long, env = "ZEN_LEGACY_AGENT_KEY", hide_env_values = true)]
        legacy_agent_key: String,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a local user with an Argon2id password hash (for ZEN_LOCAL_LOGIN).
    Add {
        #[arg(long)]
        username: String,
        #[arg(long)]
        email: Option<String>,
        /// Make the user a platform admin.
        #[arg(long)]
        admin: bool,
        /// Read the password from the first line of standard input (otherwise
        /// ZEN_USER_PASSWORD).
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the audit chains and name the first broken or missing record; exits 1 if any.
    /// With --segment, verify an exported segment offline instead (no database needed).
    Verify {
        /// Only this tenant's chain (the nil UUID is the platform chain); default: all chains.
        #[arg(long, conflicts_with = "segment")]
        tenant: Option<uuid::Uuid>,
        /// An exported segment file: checks its digest, its signature and its chain.
        #[arg(long)]
        segment: Option<PathBuf>,
        /// The public key to check the signature with (the base64 line `zen keys
        /// audit-public-key` prints); default: the configured signing key's.
        #[arg(long, requires = "segment")]
        public_key: Option<PathBuf>,
    },
    /// Export audit records created before a time to signed segments (one file per chain) and
    /// record a checkpoint for each; with --prune, then delete the exported records.
    Export {
        /// An RFC 3339 time, or an age such as `90d` or `12h` (that long before now).
        #[arg(long)]
        before: String,
        /// The directory the segments are written to.
        #[arg(long)]
        out: PathBuf,
        /// Only this tenant's chain (the nil UUID is the platform chain); default: all chains.
        #[arg(long)]
        tenant: Option<uuid::Uuid>,
        /// Delete the exported records from the database once their segment verified.
        #[arg(long)]
        prune: bool,
    },
    /// List a tenant's audit records over the API, as the logged-in person.
    List {
        #[arg(long, env = "ZEN_TENANT")]
        tenant: String,
        #[arg(long, default_value_t = 50)]
        page_size: u32,
    },
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create the development PKI under <data-dir>/pki (done by `serve` on first start).
    Init,
    /// Issue a client identity signed by the platform CA.
    Issue {
        /// Identity name (lowercase letters, digits, '-' or '_').
        #[arg(long)]
        name: String,
        /// `service` for internal services such as the gateway, `admin` for operators.
        #[arg(long, value_enum)]
        role: IdentityRole,
        /// Directory for NAME.crt and NAME.key (default <data-dir>/pki).
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Validity in days.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u64).range(1..=1825))]
        days: u64,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum IdentityRole {
    Service,
    Admin,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(cli));
    // Spans still batched go out before the process ends.
    zen::telemetry::shutdown();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            match error.downcast_ref::<zen::ops::Failure>() {
                Some(failure) => ExitCode::from(failure.code),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// The operator commands: they talk to a running Zen over its API and need no server
/// configuration. `None` when `command` is not one of them.
fn is_operator(command: &Command) -> bool {
    matches!(
        command,
        Command::Login { .. }
            | Command::Tenant(_)
            | Command::Member(_)
            | Command::Invite(_)
            | Command::Cluster(_)
            | Command::Token(_)
            | Command::Source(_)
            | Command::Remediation(_)
            | Command::Event(_)
            | Command::Audit(AuditCommand::List { .. })
            | Command::Completions { .. }
    )
}

async fn run_operator(command: Command, output: Output) -> anyhow::Result<()> {
    use zen::ops::commands as ops;
    match command {
        Command::Login {
            url,
            username,
            password_stdin,
        } => {
            let password = if password_stdin {
                let mut line = String::new();
                match std::io::stdin().read_line(&mut line) {
                    Ok(_) => Ok(line.trim_end_matches(['\r', '\n']).to_owned()),
                    Err(e) => Err(anyhow::Error::from(e)),
                }
            } else {
                std::env::var("ZEN_USER_PASSWORD").context(
                    "give the password on stdin (--password-stdin) or in ZEN_USER_PASSWORD",
                )
            };
            match password {
                Ok(password) => zen::ops::login(&url, &username, &password)
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            }
        }
        Command::Tenant(c) => ops::tenant(c, output).await,
        Command::Member(c) => ops::member(c, output).await,
        Command::Invite(c) => ops::invite(c, output).await,
        Command::Cluster(c) => ops::cluster(c, output).await,
        Command::Token(c) => ops::token(c, output).await,
        Command::Source(c) => ops::source(c, output).await,
        Command::Remediation(c) => ops::remediation(c, output).await,
        Command::Event(c) => ops::event(c, output).await,
        Command::Audit(AuditCommand::List { tenant, page_size }) => {
            ops::audit_list(&tenant, page_size, output).await
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "zen", &mut std::io::stdout());
            Ok(())
        }
        _ => anyhow::bail!("not an operator command"),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if is_operator(&cli.command) {
        return run_operator(cli.command, cli.output).await;
    }
    let serve_args = match &cli.command {
        Command::Serve(args) => (**args).clone(),
        _ => ServeArgs::default(),
    };
    let config = Config::resolve(&cli.global, &serve_args)?;
    // A benchmark's output is its figures: the servers it starts log nothing (they export
    // traces when OTEL_EXPORTER_OTLP_ENDPOINT is set, to measure what tracing costs).
    let logs = (!matches!(cli.command, Command::Bench(_))).then_some(config.log_format);
    telemetry::init(logs, telemetry::TraceExport::from_env()?.as_ref())?;
    match cli.command {
        Command::Serve(_) => {
            let signal = server::shutdown_signal();
            server::run(config, signal).await
        }
        Command::Migrate { status } => store::migrate_command(&config, status).await,
        Command::Dlq(DlqCommand::List { tenant, all }) => {
            zen::remediation::cli::list(&config, tenant, all).await
        }
        Command::Dlq(DlqCommand::Replay { tenant, id }) => {
            zen::remediation::cli::replay(&config, tenant, id).await
        }
        Command::Audit(AuditCommand::Verify {
            segment: Some(segment),
            public_key,
            ..
        }) => {
            let public_key = match public_key {
                Some(path) => zen::audit_archive::read_public_key(&path)?,
                None => {
                    use base64::Engine;
                    let key =
                        zen::audit_archive::SigningKey::load(&config.audit_signing_key, false)?;
                    base64::engine::general_purpose::STANDARD.decode(key.public_key())?
                }
            };
            let summary = zen::audit_archive::verify_file(&segment, &public_key)
                .with_context(|| format!("{} does not verify", segment.display()))?;
            println!(
                "ok      {}  tenant {}  seq {}..={}  {} record(s)  head {}  signed by {}",
                segment.display(),
                summary.tenant_id,
                summary.first_seq,
                summary.last_seq,
                summary.records,
                summary.head_hash,
                summary.key_id
            );
            Ok(())
        }
        Command::Audit(AuditCommand::Verify { tenant, .. }) => {
            store::verify_audit_command(&config, tenant).await
        }
        Command::Audit(AuditCommand::Export {
            before,
            out,
            tenant,
            prune,
        }) => store::export_audit_command(&config, &before, &out, tenant, prune).await,
        operator @ (Command::Audit(AuditCommand::List { .. })
        | Command::Login { .. }
        | Command::Tenant(_)
        | Command::Member(_)
        | Command::Invite(_)
        | Command::Cluster(_)
        | Command::Token(_)
        | Command::Source(_)
        | Command::Remediation(_)
        | Command::Event(_)
        | Command::Completions { .. }) => run_operator(operator, cli.output).await,
        Command::Agent(AgentCommand::Bootstrap {
            url,
            grpc_url,
            server_name,
            token,
            dir,
        }) => {
            let config = zen::agent::bootstrap(&url, &grpc_url, &server_name, &token, &dir).await?;
            println!(
                "enrolled cluster {} of tenant {}; identity in {}",
                config.cluster_id,
                config.tenant_id,
                dir.display()
            );
            Ok(())
        }
        Command::Agent(AgentCommand::Run {
            dir,
            input,
            batch_size,
            follow,
            exec_hook,
        }) => {
            let files = zen::agent::AgentFiles::new(dir);
            let options = zen::agent::RunOptions {
                batch_size: batch_size.clamp(1, 1000),
                batch_delay: std::time::Duration::from_millis(100),
                follow,
            };
            let summary = match input {
                Some(path) => {
                    let file = tokio::fs::File::open(&path)
                        .await
                        .with_context(|| format!("opening {}", path.display()))?;
                    zen::agent::run_with_hook(&files, file, options, exec_hook).await?
                }
                None => {
                    zen::agent::run_with_hook(&files, tokio::io::stdin(), options, exec_hook)
                        .await?
                }
            };
            println!(
                "accepted {} duplicate {} rejected {} reconnects {}",
                summary.accepted, summary.duplicate, summary.rejected, summary.reconnects
            );
            Ok(())
        }
        Command::Bench(BenchCommand::Ingest {
            agents,
            events_per_agent,
            batch,
            postgres_url,
            no_sqlite,
        }) => {
            let load = zen::bench::IngestLoad {
                agents: agents.max(1),
                events_per_agent: events_per_agent.max(1),
                batch: batch.clamp(1, 1000),
            };
            println!(
                "zen bench ingest: {} agents x {} events, batches of {}",
                load.agents, load.events_per_agent, load.batch
            );
            if !no_sqlite {
                let dir = tempfile::tempdir()?;
                let url = format!("sqlite://{}", dir.path().join("bench.db").display());
                zen::bench::ingest(&url, load.clone()).await?;
            }
            if let Some(admin_url) = postgres_url {
                let load = load.clone();
                zen::bench::with_scratch_postgres(&admin_url, |url| async move {
                    zen::bench::ingest(&url, load).await
                })
                .await?;
            }
            Ok(())
        }
        Command::Bench(BenchCommand::Validation { iterations }) => {
            print!("{}", zen::bench_validation::run(iterations.max(1))?);
            Ok(())
        }
        Command::Bench(BenchCommand::Webhooks {
            deliveries,
            concurrency,
            database,
            schemes,
            postgres_url,
            stuck_watchers,
        }) => {
            let load = zen::bench_webhooks::WebhookLoad {
                deliveries: deliveries.max(1),
                concurrency: concurrency.max(1),
                schemes,
                stuck_watchers,
                redis_url: cli.global.redis_url.clone(),
            };
            load.validate()?;
            println!(
                "zen bench webhooks: {} deliveries per scheme, {} connections",
                load.deliveries, load.concurrency
            );
            let mut figures = Vec::new();
            if database != BenchDatabase::Postgres {
                let dir = tempfile::tempdir()?;
                let url = format!("sqlite://{}", dir.path().join("bench.db").display());
                let name = if load.redis_url.is_some() {
                    "SQLite + Redis"
                } else {
                    "SQLite"
                };
                figures.push(zen::bench_webhooks::webhooks(name, &url, &load).await?);
            }
            if database != BenchDatabase::Sqlite {
                let load = load.clone();
                figures.push(
                    zen::bench::with_scratch_postgres(&postgres_url, |url| async move {
                        let name = if load.redis_url.is_some() {
                            "PostgreSQL + Redis"
                        } else {
                            "PostgreSQL"
                        };
                        zen::bench_webhooks::webhooks(name, &url, &load).await
                    })
                    .await?,
                );
            }
            for f in &figures {
                println!("\n{}", f.table());
            }
            if let Some(f) = figures.iter().find(|f| !f.durable()) {
                anyhow::bail!(
                    "{}: the events stored do not match the deliveries answered 202",
                    f.database
                );
            }
            Ok(())
        }
        Command::Keys(KeysCommand::WebhookKey { id }) => {
            let line = format!("{id}:{}", zen_webhook::SecretSealer::generate_key());
            zen_webhook::SecretSealer::from_config(&line)?;
            println!("{line}");
            Ok(())
        }
        Command::Keys(KeysCommand::LegacyAgentKey {
            tenant_id,
            cluster_id,
            legacy_agent_key,
        }) => {
            println!(
                "{}",
                zen::grpc::services::webhooks::Webhooks::legacy_cluster_key(
                    &legacy_agent_key,
                    tenant_id,
                    cluster_id
                )
            );
            Ok(())
        }
        Command::Keys(KeysCommand::AuditKey { out }) => {
            let key = zen::audit_archive::SigningKey::generate(&out)?;
            println!(
                "created audit signing key {} in {}",
                key.key_id(),
                out.display()
            );
            println!("public key: {}", key.public_key());
            Ok(())
        }
        Command::Keys(KeysCommand::AuditPublicKey) => {
            let create = config.environment == zen::config::Environment::Development;
            let key = zen::audit_archive::SigningKey::load(&config.audit_signing_key, create)?;
            println!("{}", key.public_key());
            Ok(())
        }
        Command::Keys(KeysCommand::RotateJwt) => {
            let kid = zen_security::jwt::KeyRing::rotate(&config.jwt_keys_dir)?;
            println!("new signing key {kid} in {}", config.jwt_keys_dir.display());
            Ok(())
        }
        Command::User(UserCommand::Add {
            username,
            email,
            admin,
            password_stdin,
        }) => {
            let password = if password_stdin {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                line.trim_end_matches(['\r', '\n']).to_owned()
            } else {
                std::env::var("ZEN_USER_PASSWORD").context(
                    "give the password on stdin (--password-stdin) or in ZEN_USER_PASSWORD",
                )?
            };
            store::add_user_command(&config, username, email, admin, &password).await
        }
        Command::Pki(PkiCommand::Init) => {
            let files = PkiFiles::new(config.pki_dir());
            if files.exists() {
                anyhow::bail!("a PKI already exists in {}", files.dir.display());
            }
            zen::tls::ensure_dev_pki(&config)
        }
        Command::Pki(PkiCommand::Issue {
            name,
            role,
            out_dir,
            days,
        }) => {
            let files = PkiFiles::new(config.pki_dir());
            let ca = files
                .load_ca()
                .context("loading the platform CA (run `zen pki init` or `zen serve` first)")?;
            let identity = match role {
                IdentityRole::Service => PeerIdentity::Service { name: name.clone() },
                IdentityRole::Admin => PeerIdentity::Admin { name: name.clone() },
            };
            let issued =
                ca.issue_client(&identity, std::time::Duration::from_secs(days * 24 * 3600))?;
            let out = PkiFiles::new(out_dir.unwrap_or_else(|| files.dir.clone()));
            std::fs::create_dir_all(&out.dir)?;
            out.write_identity(&name, &issued)?;
            println!(
                "issued {} ({})\n  {}\n  {}",
                identity,
                identity.uri(),
                out.cert(&name).display(),
                out.key(&name).display()
            );
            Ok(())
        }
    }
}
