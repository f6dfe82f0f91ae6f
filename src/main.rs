//! `rac`: parse the command line, set up logging, build the runtime, hand over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = rac::cli::Cli::parse();
    rac::cli::init_tracing(&cli);
    let json_errors = cli.json_errors();
    match rac::cli::run(cli) {
        Ok(code) => code,
        Err(e) => rac::cli::report_error(&e, json_errors),
    }
}
