//! `rac`: parse the command line, set up logging, build the runtime, hand over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = rac::cli::Cli::parse();
    rac::cli::init_tracing(&cli);
    match rac::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
