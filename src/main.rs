//! The mqttgate command line. Everything it does lives in the library; this file parses
//! arguments, sets up logging and the runtime, and maps results to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "mqttgate", version, about = "Event Grid style MQTT client-certificate authentication in front of any MQTT broker")]
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
    /// Print a certificate's SHA-256 thumbprint as the registry's allowedThumbprints wants it.
    Thumbprint {
        /// A PEM (or DER) certificate file; the first certificate is used.
        cert: PathBuf,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Run { config } => mqttgate::cli::run(&config),
        Command::Check { config } => mqttgate::cli::check(&config).map(|report| print!("{report}")),
        Command::Thumbprint { cert } => {
            mqttgate::cli::thumbprint(&cert).map(|t| println!("{t}"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mqttgate: {e}");
            ExitCode::FAILURE
        }
    }
}
