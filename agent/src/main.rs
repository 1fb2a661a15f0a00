//! `hodei-agent`: the lean agent binary (the same agent as `hodei agent`).

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "hodei-agent",
    version,
    about = "Hodei agent: runs jobs for a Hodei server"
)]
struct Cli {
    #[command(flatten)]
    args: hodei_agent::AgentArgs,
}

fn main() -> std::process::ExitCode {
    hodei_agent::init_logging();
    let cli = Cli::parse();
    match hodei_agent::run(cli.args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hodei-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
