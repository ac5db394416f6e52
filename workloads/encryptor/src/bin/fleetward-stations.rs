//! `fleetward-stations export …`: see `fleetward_encryptor::export`.

use clap::Parser;
use fleetward_encryptor::export::{Cli, Command, export};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Export(args) => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            match export(&args, &mut out).await {
                Ok(n) => {
                    eprintln!("{n} row(s)");
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}
