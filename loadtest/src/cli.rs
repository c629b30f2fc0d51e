//! The command line: clap definitions and their validation into `Settings`, the checked
//! description of a run.

use crate::error::Error;
use crate::target::{Scheme, Target};
use crate::units::{parse_cpus, parse_duration};
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

/// HTTP/1.1 load generator. Without --rate: closed loop (each connection sends its next
/// request as soon as the previous response arrives). With --rate: open loop (requests on a
/// fixed schedule, latency measured from the intended send time).
#[derive(Debug, Clone, Parser)]
#[command(name = "cflow-load", version)]
pub struct Cli {
    /// Target: http://host:port/path or https://host:port/path
    #[arg(value_name = "URL")]
    pub url: String,

    /// Total keep-alive connections, spread over the threads
    #[arg(short = 'c', long, value_name = "N", default_value_t = 64)]
    pub connections: usize,

    /// Measured duration, e.g. 500ms, 10s, 2m
    #[arg(short = 'd', long, value_name = "DUR", default_value = "10s")]
    pub duration: String,

    /// Warm-up before measuring, excluded from the results
    #[arg(long, value_name = "DUR", default_value = "1s")]
    pub warmup: String,

    /// Worker threads, each with its own runtime
    #[arg(short = 't', long, value_name = "N", default_value_t = 1)]
    pub threads: usize,

    /// Pin the threads to these CPUs (round-robin), e.g. "1" or "2,3"
    #[arg(long, value_name = "LIST")]
    pub cpus: Option<String>,

    /// Open loop: total requests per second on a fixed schedule
    #[arg(long, value_name = "RPS")]
    pub rate: Option<String>,

    /// Requests in flight per connection (closed loop only)
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub pipeline: usize,

    /// Request method
    #[arg(short = 'm', long, value_name = "M", default_value = "GET")]
    pub method: String,

    /// Extra header "Name: value" (repeatable)
    #[arg(short = 'H', long = "header", value_name = "N: V")]
    pub headers: Vec<String>,

    /// File with one header line per line, rotated per request (request i uses line i mod n)
    #[arg(long, value_name = "F")]
    pub header_file: Option<PathBuf>,

    /// Request body, sent with Content-Length
    #[arg(long, value_name = "F")]
    pub body_file: Option<PathBuf>,

    /// PEM CA bundle to verify an https target (required with https)
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// Client certificate (PEM) for mTLS; needs --key
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,

    /// Client private key (PEM) for mTLS; needs --cert
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,

    /// Server name for SNI and certificate verification (default: the URL's host)
    #[arg(long, value_name = "NAME")]
    pub sni: Option<String>,

    /// Never resume TLS sessions: every new connection does a full handshake (by default
    /// session tickets and IDs from earlier connections are reused)
    #[arg(long)]
    pub no_resume: bool,

    /// Print the result as one JSON object instead of the table
    #[arg(long)]
    pub json: bool,

    /// Write the latency percentile distribution (HdrHistogram .hgrm text, microseconds)
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<PathBuf>,

    /// Write an SVG plot of the latency by percentile
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,

    /// Per-request timeout; a timed-out request counts as error "timeout" and its
    /// connection is reopened
    #[arg(long, value_name = "DUR", default_value = "5s")]
    pub timeout: String,
}

/// A validated run description.
#[derive(Debug, Clone)]
pub struct Settings {
    pub target: Target,
    pub connections: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub threads: usize,
    pub cpus: Vec<usize>,
    pub rate: Option<f64>,
    pub pipeline: usize,
    pub method: String,
    pub headers: Vec<String>,
    pub header_file: Option<PathBuf>,
    pub body_file: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub sni: Option<String>,
    /// Resume TLS sessions on new connections (off with --no-resume).
    pub resume: bool,
    pub json: bool,
    pub hgrm: Option<PathBuf>,
    pub plot: Option<PathBuf>,
    pub timeout: Duration,
}

fn parse_dur(option: &'static str, value: &str) -> Result<Duration, Error> {
    parse_duration(value).map_err(|reason| Error::Option {
        option,
        value: value.to_string(),
        reason,
    })
}

fn positive(option: &'static str, value: usize) -> Result<usize, Error> {
    if value == 0 {
        return Err(Error::Option {
            option,
            value: "0".into(),
            reason: "must be at least 1".into(),
        });
    }
    Ok(value)
}

impl Settings {
    /// Checks the command line and turns it into settings.
    pub fn from_cli(cli: Cli) -> Result<Settings, Error> {
        let target = Target::parse(&cli.url)?;
        let connections = positive("--connections", cli.connections)?;
        let threads = positive("--threads", cli.threads)?;
        let pipeline = positive("--pipeline", cli.pipeline)?;
        if connections < threads {
            return Err(Error::Usage(format!(
                "--connections ({connections}) must be at least --threads ({threads})"
            )));
        }
        let duration = parse_dur("--duration", &cli.duration)?;
        if duration.is_zero() {
            return Err(Error::Option {
                option: "--duration",
                value: cli.duration,
                reason: "must be longer than 0".into(),
            });
        }
        let warmup = parse_dur("--warmup", &cli.warmup)?;
        let timeout = parse_dur("--timeout", &cli.timeout)?;
        if timeout.is_zero() {
            return Err(Error::Option {
                option: "--timeout",
                value: cli.timeout,
                reason: "must be longer than 0".into(),
            });
        }
        let cpus = match &cli.cpus {
            None => Vec::new(),
            Some(list) => parse_cpus(list).map_err(|reason| Error::Option {
                option: "--cpus",
                value: list.clone(),
                reason,
            })?,
        };
        let rate = match &cli.rate {
            None => None,
            Some(text) => match text.trim().parse::<f64>() {
                Ok(rate) if rate.is_finite() && rate > 0.0 && rate <= 1e9 => Some(rate),
                _ => {
                    return Err(Error::Option {
                        option: "--rate",
                        value: text.clone(),
                        reason: "expected requests per second, a number above 0".into(),
                    })
                }
            },
        };
        if rate.is_some() && pipeline > 1 {
            return Err(Error::Usage(
                "--pipeline applies to the closed loop only; it cannot be combined with --rate"
                    .into(),
            ));
        }
        let https = target.scheme == Scheme::Https;
        if https && cli.ca.is_none() {
            return Err(Error::Usage(
                "an https target needs --ca FILE (PEM CA bundle to verify the server)".into(),
            ));
        }
        Ok(Settings {
            target,
            connections,
            duration,
            warmup,
            threads,
            cpus,
            rate,
            pipeline,
            method: cli.method,
            headers: cli.headers,
            header_file: cli.header_file,
            body_file: cli.body_file,
            ca: cli.ca,
            client_cert: cli.cert.zip(cli.key),
            sni: cli.sni,
            resume: !cli.no_resume,
            json: cli.json,
            hgrm: cli.hgrm,
            plot: cli.plot,
            timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Result<Settings, Error> {
        let cli = Cli::try_parse_from(std::iter::once("cflow-load").chain(args.iter().copied()))
            .expect("clap accepts the arguments");
        Settings::from_cli(cli)
    }

    #[test]
    fn defaults() {
        let s = settings(&["http://127.0.0.1:1/"]).unwrap();
        assert_eq!(s.connections, 64);
        assert_eq!(s.duration, Duration::from_secs(10));
        assert_eq!(s.warmup, Duration::from_secs(1));
        assert_eq!(s.threads, 1);
        assert_eq!(s.pipeline, 1);
        assert_eq!(s.method, "GET");
        assert_eq!(s.timeout, Duration::from_secs(5));
        assert!(s.rate.is_none() && s.cpus.is_empty() && !s.json);
        assert!(s.resume, "TLS session resumption is on by default");
    }

    #[test]
    fn all_options() {
        let s = settings(&[
            "-c",
            "8",
            "-d",
            "2m",
            "--warmup",
            "500ms",
            "-t",
            "2",
            "--cpus",
            "2,3",
            "--rate",
            "1500",
            "-m",
            "POST",
            "-H",
            "A: 1",
            "-H",
            "B: 2",
            "--header-file",
            "hf",
            "--body-file",
            "bf",
            "--json",
            "--hgrm",
            "out.hgrm",
            "--plot",
            "p.svg",
            "--timeout",
            "2s",
            "https://h:8443/x",
            "--ca",
            "ca.pem",
            "--cert",
            "c.pem",
            "--key",
            "k.pem",
            "--sni",
            "name",
            "--no-resume",
        ])
        .unwrap();
        assert_eq!((s.connections, s.threads), (8, 2));
        assert_eq!(s.duration, Duration::from_secs(120));
        assert_eq!(s.warmup, Duration::from_millis(500));
        assert_eq!(s.cpus, vec![2, 3]);
        assert_eq!(s.rate, Some(1500.0));
        assert_eq!(s.headers, vec!["A: 1", "B: 2"]);
        assert_eq!(s.sni.as_deref(), Some("name"));
        assert!(s.client_cert.is_some() && s.json);
        assert!(!s.resume);
    }

    #[test]
    fn rejects_bad_combinations() {
        assert!(settings(&["-d", "10x", "http://h/"]).is_err());
        assert!(settings(&["-d", "0s", "http://h/"]).is_err());
        assert!(settings(&["--timeout", "0", "http://h/"]).is_err());
        assert!(settings(&["-c", "0", "http://h/"]).is_err());
        assert!(settings(&["-c", "2", "-t", "4", "http://h/"]).is_err());
        assert!(settings(&["--rate", "100", "--pipeline", "4", "http://h/"]).is_err());
        assert!(settings(&["--rate=-5", "http://h/"]).is_err());
        assert!(settings(&["--rate", "fast", "http://h/"]).is_err());
        assert!(settings(&["--cpus", "x", "http://h/"]).is_err());
        assert!(settings(&["https://h/"]).is_err());
        assert!(settings(&["ftp://h/"]).is_err());
        assert!(Cli::try_parse_from(["cflow-load", "--cert", "c", "http://h/"]).is_err());
    }
}
