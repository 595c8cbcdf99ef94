//! The `obscura` binary.

mod cli;

use clap::{CommandFactory, FromArgMatches};
use cli::args::{Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // The subcommand's own matches: they tell a flag the user gave from a shown default.
    let (_, m) = matches.subcommand().expect("clap requires a subcommand");
    let runtime_dir = quiet_mesa(&cli);
    init_logging(&cli);
    let result = match &cli.command {
        Command::Anonymise(args) => cli::anonymise::run(args, m, cli.quiet),
        Command::Batch(args) => cli::batch::run(args, m, cli.quiet),
        Command::Eval(args) => cli::eval::run(args, m),
        Command::Retention(args) => cli::retention::run(args, m),
        Command::Serve(args) => cli::serve::run(args, m),
    };
    drop(runtime_dir);
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}

/// Mesa's Vulkan driver prints "error: XDG_RUNTIME_DIR is invalid or not set" on headless
/// machines, which reads like our failure. When the GPU will be probed and the variable is
/// unset, point it at a private temporary folder (removed at exit).
fn quiet_mesa(cli: &Cli) -> Option<tempfile::TempDir> {
    let probes_gpu = match &cli.command {
        Command::Anonymise(args) => args.redaction.redact_on != obscura::redact::backend::RedactOn::Cpu,
        Command::Batch(args) => args.redaction.redact_on != obscura::redact::backend::RedactOn::Cpu,
        Command::Serve(args) => args.redaction.redact_on != obscura::redact::backend::RedactOn::Cpu,
        Command::Eval(_) | Command::Retention(_) => false,
    };
    if !probes_gpu || std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        return None;
    }
    let dir = tempfile::Builder::new().prefix("obscura-runtime-").tempdir().ok()?; // mode 0700
    // SAFETY: called first thing in `main`, before any other thread exists.
    unsafe { std::env::set_var("XDG_RUNTIME_DIR", dir.path()) };
    Some(dir)
}

fn init_logging(cli: &Cli) {
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    // ONNX Runtime warns about harmless model details (unused initializers): show it only with -vv.
    // wgpu logs its adapter probing (e.g. EGL failing on a headless machine) as errors
    // although a missing backend is normal: show it only with -vv.
    let quiet_deps = if cli.verbose >= 2 { "ort=info,wgpu_hal=info,wgpu_core=info" } else { "ort=error,wgpu_hal=off,wgpu_core=error,naga=error" };
    let default = format!("{level},{quiet_deps}");
    let filter = EnvFilter::try_from_env("OBSCURA_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}
