//! `cflow-load`: an HTTP/1.1 load generator for Credentialflow. Closed loop (each connection
//! sends its next request as soon as the previous response is in, optionally pipelined) or
//! open loop (a fixed global request schedule, latency counted from the intended send time so
//! that server stalls are not hidden). Thread-per-core on monoio with io_uring, pre-built
//! requests, reused buffers; results as a table or one JSON object, plus optional `.hgrm`
//! and SVG latency files.

pub mod cli;
pub mod error;
pub mod hgrm;
pub mod pacer;
pub mod plot;
pub mod report;
pub mod request;
pub mod response;
pub mod run;
pub mod stats;
pub mod target;
pub mod tls;
pub mod transport;
pub mod units;
pub mod worker;

pub use cli::{Cli, Settings};
pub use error::Error;

use std::io::Write;

/// Runs the command line: the load test, then its output on stdout and the optional files.
pub fn run_cli(cli: Cli) -> Result<(), Error> {
    let settings = Settings::from_cli(cli)?;
    let outcome = run::execute(&settings)?;
    let report = &outcome.report;
    let text = if settings.json {
        format!("{}\n", report.to_json())
    } else {
        report.to_table()
    };
    let _ = std::io::stdout().write_all(text.as_bytes());
    if outcome.stats.late_sends > 0 {
        eprintln!(
            "cflow-load: warning: {} requests left more than {} ms after their scheduled time on an idle connection: the generator could not keep the schedule (add --threads or CPU)",
            outcome.stats.late_sends,
            worker::LATE_SEND.as_millis()
        );
    }
    if let Some(path) = &settings.hgrm {
        write_file(path, &hgrm::render(&outcome.stats.histogram))?;
    }
    if let Some(path) = &settings.plot {
        let l = &report.latency_us;
        let subtitle = format!(
            "{} loop, {} connections, {} requests in {:.1} s ({:.0} req/s); p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
            report.mode,
            report.connections,
            report.requests,
            report.duration_s,
            report.rps,
            l.p50,
            l.p99,
            l.p999,
            l.max
        );
        let title = format!("cflow-load latency: {}", report.url);
        write_file(
            path,
            &plot::render(&outcome.stats.histogram, &title, &subtitle),
        )?;
    }
    Ok(())
}

fn write_file(path: &std::path::Path, contents: &str) -> Result<(), Error> {
    std::fs::write(path, contents).map_err(|source| Error::Output {
        path: path.to_path_buf(),
        source,
    })
}
