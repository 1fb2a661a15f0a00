//! hodei-loadtest: placeholder. The loadtest tooling is specified by the performance issue (#4) and
//! not built yet; this binary says so instead of pretending.

fn main() -> std::process::ExitCode {
    eprintln!("hodei-loadtest is not implemented yet (see the performance issue); nothing was run");
    std::process::ExitCode::from(2)
}
