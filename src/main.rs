//! The mqttgate command line. Everything it does lives in the library; this file parses
//! arguments, sets up logging and the runtime, and maps results to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "mqttgate",
    version,
    about = "Event Grid style MQTT client-certificate authentication in front of any MQTT broker"
)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Load the configuration and every file it names, print what was found, and exit
    /// non-zero if anything is wrong.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Certificate tooling.
    #[cfg(feature = "demo")]
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Explain, step by step, what mqttgate decides for a client certificate: TLS admission,
    /// authentication name, client, scheme check, and the CONNACK the client would get; or,
    /// with --jwt, for a token sent as a v5 CONNECT's Authentication Data; or, with
    /// --webhook-answer, for what the authentication webhook answered.
    /// Exit status: 0 allowed, 1 denied, 2 error.
    Explain {
        #[arg(long, short)]
        config: PathBuf,
        /// The client's certificate (PEM): the leaf first, then any intermediates it sends.
        #[arg(long, required_unless_present_any = ["jwt", "webhook_answer"])]
        cert: Option<PathBuf>,
        /// The CONNECT Username the client sends (omit for none).
        #[arg(long, short)]
        username: Option<String>,
        /// A file holding the compact JWT the client sends (SPEC §9); with a JWT the
        /// certificate does not decide, so --cert is not needed.
        #[arg(long)]
        jwt: Option<PathBuf>,
        /// The Authentication Method sent with the token.
        #[arg(long, default_value = "CUSTOM-JWT", requires = "jwt")]
        method: String,
        /// With --publish or --subscribe: may the client publish to, or subscribe to,
        /// this topic (filter)? Prints its client groups and the binding that allows it.
        #[arg(long)]
        topic: Option<String>,
        #[arg(long, requires = "topic", conflicts_with = "subscribe")]
        publish: bool,
        #[arg(long, requires = "topic")]
        subscribe: bool,
        /// A file holding the JSON body the webhook answers (SPEC §9); shows what that
        /// answer decides (no webhook is called).
        #[arg(long, conflicts_with_all = ["jwt", "cert", "topic"])]
        webhook_answer: Option<PathBuf>,
    },
    /// Print a certificate's SHA-256 thumbprint as the registry's allowedThumbprints wants it.
    Thumbprint {
        /// A PEM (or DER) certificate file; the first certificate is used.
        cert: PathBuf,
    },
}

#[cfg(feature = "demo")]
#[derive(Subcommand)]
enum CertsCommand {
    /// Write a demo PKI, registry, mqttgate config and Mosquitto config into DIR.
    Demo {
        dir: PathBuf,
        /// mqttgate's TLS port in the generated config.
        #[arg(long, default_value_t = 8883)]
        listen_port: u16,
        /// The admin port in the generated config.
        #[arg(long, default_value_t = 9090)]
        admin_port: u16,
        /// The Mosquitto port (loopback) in the generated configs.
        #[arg(long, default_value_t = 18830)]
        broker_port: u16,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        // Client-chosen strings must not be able to start a line of their own.
        LogFormat::Text => builder.fmt_fields(mqttgate::audit::TextFields).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn main() -> ExitCode {
    // Before any thread exists: the arena limit binds only arenas created after it.
    mqttgate::trust::memory::configure_allocator();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    if let Command::Explain {
        config,
        cert,
        username,
        jwt,
        method,
        topic,
        publish,
        subscribe,
        webhook_answer,
    } = &cli.command
    {
        use mqttgate::cli::explain::{explain_jwt, explain_topic, explain_webhook};
        let action = match (publish, subscribe) {
            (_, true) => mqttgate::authz::Action::Subscribe,
            _ => mqttgate::authz::Action::Publish,
        };
        if topic.is_some() && !publish && !subscribe {
            eprintln!("mqttgate: --topic needs --publish or --subscribe");
            return ExitCode::from(2);
        }
        let topic = topic.as_deref().map(|t| (action, t));
        let explained = match (jwt, cert, webhook_answer) {
            (_, _, Some(answer)) => explain_webhook(config, answer),
            (Some(token), _, None) => explain_jwt(config, token, method),
            (None, Some(cert), None) => explain_topic(config, cert, username.as_deref(), topic),
            (None, None, None) => {
                unreachable!("clap requires --cert without --jwt or --webhook-answer")
            }
        };
        return match explained {
            Ok(e) => {
                print!("{}", e.text());
                ExitCode::from(if e.allowed { 0 } else { 1 })
            }
            Err(e) => {
                eprintln!("mqttgate: {e}");
                ExitCode::from(2)
            }
        };
    }
    let result = match cli.command {
        Command::Run { config } => mqttgate::cli::run(&config),
        Command::Check { config } => mqttgate::cli::check(&config).map(|report| print!("{report}")),
        #[cfg(feature = "demo")]
        Command::Certs {
            command:
                CertsCommand::Demo {
                    dir,
                    listen_port,
                    admin_port,
                    broker_port,
                },
        } => {
            let ports = mqttgate::cli::demo::DemoPorts {
                listen: listen_port,
                admin: admin_port,
                broker: broker_port,
            };
            mqttgate::cli::demo::generate(&dir, ports).map(|clients| {
                println!("wrote the demo PKI and configuration to {}", dir.display());
                for c in clients {
                    println!(
                        "  {:<16} {:<34} {}{}",
                        c.name,
                        c.scheme,
                        c.authentication_name,
                        if c.enabled { "" } else { "  (disabled)" }
                    );
                }
            })
        }
        Command::Thumbprint { cert } => mqttgate::cli::thumbprint(&cert).map(|t| println!("{t}")),
        Command::Explain { .. } => unreachable!("handled above"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mqttgate: {e}");
            ExitCode::FAILURE
        }
    }
}
