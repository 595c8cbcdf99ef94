//! The `obscura` binary.

mod cli;

use clap::Parser;
use cli::args::{Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = Cli::parse();
    init_logging(&cli);
    let result = match &cli.command {
        Command::Anonymise(args) => cli::anonymise::run(args, cli.quiet),
        Command::Eval(args) => cli::eval::run(args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}

fn init_logging(cli: &Cli) {
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    // ONNX Runtime warns about harmless model details (unused initializers): show it only with -vv.
    let default = format!("{level},ort={}", if cli.verbose >= 2 { "info" } else { "error" });
    let filter = EnvFilter::try_from_env("OBSCURA_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}
