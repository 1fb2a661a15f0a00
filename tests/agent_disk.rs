//! An agent's disk over months: working directories kept because their jobs left files in
//! them are removed after `hodei agent --keep-workdirs`.

mod common;

use std::time::Duration;

use common::{Scratch, Server, wait_for};

/// Names of the kept working directories in an agent's work dir.
fn kept(jobs: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(jobs).map_or_else(
        |_| Vec::new(),
        |dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        },
    )
}

/// A job leaves a file in its default working directory: the agent keeps the directory,
/// and removes it once `--keep-workdirs` (here 2 s) has passed; a job that leaves nothing
/// keeps nothing. (Without the sweep the directory stayed for good.)
#[test]
fn kept_working_directories_are_removed_after_keep_workdirs() {
    let scratch = Scratch::new("agent-disk");
    let server = Server::start(&scratch, 1);
    let _agent = server.agent(&scratch, "a", 1, &["--keep-workdirs", "2s"]);
    server.wait_workers(1);
    let id = server.submit(&["--", "sh", "-c", "mkdir d; echo x > d/f"]);
    server.wait_job(&id, "the job to succeed", |j| j["state"] == "succeeded");
    let jobs = scratch.path("a").join("jobs");
    let names = wait_for(
        "the job's directory to be kept",
        Duration::from_secs(10),
        || {
            let k = kept(&jobs);
            (!k.is_empty()).then_some(k)
        },
    );
    assert!(names.iter().any(|n| n.starts_with(&id)), "{names:?}");
    wait_for(
        "the kept directory to be removed",
        Duration::from_secs(20),
        || kept(&jobs).is_empty().then_some(()),
    );
}
