//! TLS termination, mutual TLS and upstream TLS, black-box: certificates are generated here
//! (rcgen), the real gateway binary serves them on loopback, and rustls clients and a rustls
//! origin talk to it.

mod common;

use common::pki::{client_config, provider, Ca, Issued, BOTH};
use common::*;
use rcgen::CertificateParams;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, DigitallySignedStruct, HandshakeKind, ProtocolVersion, SignatureScheme,
};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A directory of PEM files for one test.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new() -> Files {
        let dir = unique_temp_path("pki");
        std::fs::create_dir_all(&dir).expect("create pki dir");
        Files { dir }
    }

    fn write(&self, name: &str, content: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, content).expect("write pem");
        path.display().to_string()
    }

    /// Writes `NAME.pem` and `NAME.key`; returns the `{ cert, key }` table.
    fn pair(&self, name: &str, issued: &Issued) -> String {
        let cert = self.write(&format!("{name}.pem"), &issued.cert_pem);
        let key = self.write(&format!("{name}.key"), &issued.key_pem);
        format!("{{ cert = \"{cert}\", key = \"{key}\" }}")
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------
// Configs and clients
// ---------------------------------------------------------------------------

/// A gateway config with one TLS listener (the given `[listeners.tls]` body), upstream "app" at
/// `upstream`, and one catch-all route with `route_extra` keys.
fn tls_gateway_config(port: u16, upstream: u16, tls: &str, route_extra: &str) -> String {
    format!(
        "[gateway]\nworkers = 2\npin = false\n\n[logging]\nlevel = \"warn\"\n\n\
         [[listeners]]\nname = \"public\"\naddress = \"127.0.0.1:{port}\"\n\n\
         [listeners.tls]\n{tls}\n\n\
         [[upstreams]]\nname = \"app\"\ntargets = [\"127.0.0.1:{upstream}\"]\n\n\
         [[apis]]\nname = \"demo\"\n\n\
         [[apis.routes]]\npath = \"/\"\nupstream = \"app\"\n{route_extra}\n"
    )
}

/// The usual set-up: a CA, a server certificate for `api.test` written to disk, and an echo
/// upstream; `start` runs a gateway with that certificate plus extra `[listeners.tls]` keys.
struct TlsSetup {
    ca: Ca,
    files: Files,
    pair: String,
    upstream: TestUpstream,
}

impl TlsSetup {
    fn new() -> TlsSetup {
        TlsSetup::with_upstream(Mode::Echo)
    }

    fn with_upstream(mode: Mode) -> TlsSetup {
        let ca = Ca::new("Test CA");
        let files = Files::new();
        let pair = files.pair("s", &ca.server(&["api.test"]));
        TlsSetup {
            ca,
            files,
            pair,
            upstream: TestUpstream::start(mode),
        }
    }

    /// Starts a gateway; returns its port and the handle.
    fn start(&self, tls_extra: &str, route_extra: &str) -> (u16, Gateway) {
        self.start_with_log(tls_extra, route_extra, "warn")
    }

    fn start_with_log(&self, tls_extra: &str, route_extra: &str, level: &str) -> (u16, Gateway) {
        let port = free_port();
        let tls = format!("certificates = [{}]\n{tls_extra}", self.pair);
        let config = tls_gateway_config(port, self.upstream.port, &tls, route_extra);
        (port, Gateway::start_with_log(&config, level))
    }

    fn client_config(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<ClientConfig> {
        client_config(&self.ca.pem(), versions, None)
    }
}

/// Accepts any server certificate: used to see which certificate the gateway chose for a name
/// that certificate is not valid for.
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn accept_any_config() -> Arc<ClientConfig> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(BOTH)
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider())))
        .with_no_client_auth();
    Arc::new(config)
}

fn tls_client(port: u16, config: &Arc<ClientConfig>, name: &str) -> Client {
    Client::try_connect_tls(port, config.clone(), name)
        .unwrap_or_else(|e| panic!("TLS connect to {port} as {name}: {e}"))
}

fn peer_leaf(client: &Client) -> Vec<u8> {
    client
        .session()
        .peer_certificates()
        .expect("server certificate")[0]
        .to_vec()
}

/// A TLS request that must not succeed: the handshake, the write or the read fails, or the
/// gateway closes without a response.
fn assert_refused(port: u16, config: &Arc<ClientConfig>, name: &str) {
    let Ok(mut client) = Client::try_connect_tls(port, config.clone(), name) else {
        return;
    };
    if let Ok(resp) = client.try_get("/") {
        panic!("expected a refused connection, got {}", resp.status);
    }
}

fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------
// Termination, SNI, versions
// ---------------------------------------------------------------------------

#[test]
fn sni_picks_the_chain_and_unknown_names_get_the_default() {
    let ca = Ca::new("Test CA");
    let files = Files::new();
    let default = ca.server(&["default.test"]);
    let api = ca.server(&["api.test"]);
    let wild = ca.server(&["*.wild.test"]);
    let tls = format!(
        "certificates = [{}, {}, {}]",
        files.pair("default", &default),
        files.pair("api", &api),
        files.pair("wild", &wild)
    );
    let upstream = TestUpstream::start(Mode::Echo);
    let port = free_port();
    let _gw = Gateway::start(&tls_gateway_config(port, upstream.port, &tls, ""));

    // Verified clients: the chosen chain is valid for the name asked for.
    let verified = client_config(&ca.pem(), BOTH, None);
    let mut c = tls_client(port, &verified, "api.test");
    assert_eq!(peer_leaf(&c), api.der);
    assert_eq!(c.session().alpn_protocol(), None, "client offered no ALPN");
    let resp = c.get("/hello");
    assert_eq!(resp.status, 200);
    let seen = upstream.last_request();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.target, "/hello");

    let c = tls_client(port, &verified, "x.wild.test");
    assert_eq!(peer_leaf(&c), wild.der);
    let c = tls_client(port, &verified, "default.test");
    assert_eq!(peer_leaf(&c), default.der);

    // A name no certificate covers, and a second-level name under the wildcard: the default.
    let any = accept_any_config();
    assert_eq!(
        peer_leaf(&tls_client(port, &any, "unknown.test")),
        default.der
    );
    assert_eq!(
        peer_leaf(&tls_client(port, &any, "a.b.wild.test")),
        default.der
    );
    // No SNI at all (an IP address is never sent as SNI): the default.
    assert_eq!(peer_leaf(&tls_client(port, &any, "127.0.0.1")), default.der);
}

#[test]
fn alpn_http11_is_negotiated_and_h2_only_clients_are_refused() {
    let setup = TlsSetup::new();
    let (port, _gw) = setup.start("", "");

    let mut config = (*setup.client_config(BOTH)).clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut c = tls_client(port, &Arc::new(config.clone()), "api.test");
    assert_eq!(c.session().alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(c.get("/").status, 200);

    config.alpn_protocols = vec![b"h2".to_vec()];
    assert!(
        Client::try_connect_tls(port, Arc::new(config), "api.test").is_err(),
        "an h2-only client must not get a session"
    );
}

#[test]
fn tls12_and_tls13_handshakes_and_min_version() {
    let setup = TlsSetup::new();
    let (port, _gw) = setup.start("", "");

    let v12 = setup.client_config(&[&rustls::version::TLS12]);
    let mut c = tls_client(port, &v12, "api.test");
    assert_eq!(
        c.session().protocol_version(),
        Some(ProtocolVersion::TLSv1_2)
    );
    assert_eq!(c.get("/").status, 200);

    let v13 = setup.client_config(&[&rustls::version::TLS13]);
    let mut c = tls_client(port, &v13, "api.test");
    assert_eq!(
        c.session().protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );
    assert_eq!(c.get("/").status, 200);

    // A listener with min_version = "1.3" refuses a TLS 1.2-only client.
    let (port13, _gw13) = setup.start("min_version = \"1.3\"", "");
    assert!(Client::try_connect_tls(port13, v12, "api.test").is_err());
    let mut c = tls_client(port13, &v13, "api.test");
    assert_eq!(c.get("/").status, 200);
}

#[test]
fn pipelined_requests_and_large_bodies_stream_over_tls() {
    const LEN: u64 = 24 * 1024 * 1024;
    let setup = TlsSetup::new();
    let (port, _gw) = setup.start("", "max_body_bytes = 0");
    let config = setup.client_config(BOTH);

    // Two pipelined requests in one TLS record, answered in order.
    let mut c = tls_client(port, &config, "api.test");
    c.send(
        b"GET /one HTTP/1.1\r\nHost: api.test\r\n\r\nGET /two HTTP/1.1\r\nHost: api.test\r\n\r\n",
    );
    assert_eq!(c.read_response().header("x-echo-target"), Some("/one"));
    assert_eq!(c.read_response().header("x-echo-target"), Some("/two"));

    // An upload larger than any TLS or gateway buffer: every byte reaches the upstream.
    c.send(
        format!("POST /up HTTP/1.1\r\nHost: api.test\r\nContent-Length: {LEN}\r\n\r\n").as_bytes(),
    );
    let block = pattern_block(261);
    let mut sent = 0u64;
    while sent < LEN {
        let n = (LEN - sent).min(block.len() as u64) as usize;
        c.send(&block[..n]);
        sent += n as u64;
    }
    let resp = c.read_response();
    assert_eq!(resp.status, 200);
    let seen = setup.upstream.last_request();
    assert_eq!(seen.body_len, LEN);
    let mut checker = PatternChecker::new();
    checker.feed(&seen.body);
    assert!(
        checker.ok,
        "the upload's recorded prefix differs from what was sent"
    );

    // A download of the same size, Content-Length and chunked, checked byte for byte.
    for chunked in [false, true] {
        let download = TlsSetup::with_upstream(Mode::Download { len: LEN, chunked });
        let (port, _gw) = download.start("", "");
        let mut c = tls_client(port, &download.client_config(BOTH), "api.test");
        c.send(b"GET /down HTTP/1.1\r\nHost: api.test\r\n\r\n");
        let head = c.read_head().expect("download head");
        assert_eq!(head.status, 200);
        let mut checker = PatternChecker::new();
        let was_chunked = c
            .read_body_with(&head, false, &mut |d| checker.feed(d))
            .unwrap_or_else(|e| panic!("download failed: {e}"));
        assert_eq!(was_chunked, chunked);
        assert_eq!(checker.offset, LEN);
        assert!(
            checker.ok,
            "downloaded bytes differ from what the upstream sent"
        );
        // The connection is still usable afterwards.
        c.send(b"GET /down HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n");
        let head = c.read_head().expect("second head");
        assert_eq!(head.status, 200);
    }
}

// ---------------------------------------------------------------------------
// Resumption
// ---------------------------------------------------------------------------

/// Connects, makes one request (which also takes in the TLS 1.3 tickets), and returns how the
/// handshake went.
fn one_request(port: u16, config: &Arc<ClientConfig>) -> HandshakeKind {
    let mut c = tls_client(port, config, "api.test");
    assert_eq!(c.get("/").status, 200);
    c.session().handshake_kind().expect("handshake done")
}

#[test]
fn sessions_resume_on_reconnect_whichever_core_takes_it() {
    let setup = TlsSetup::new();
    // Two cores: reconnects spread over both listeners (SO_REUSEPORT hashes the client port).
    let (port, _gw) = setup.start("", "");
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let config = setup.client_config(versions);
        assert_eq!(one_request(port, &config), HandshakeKind::Full);
        for round in 0..8 {
            assert_eq!(
                one_request(port, &config),
                HandshakeKind::Resumed,
                "reconnect {round} with {versions:?} was not resumed"
            );
        }
    }

    // With tickets off nothing resumes.
    let (port_off, _gw_off) = setup.start("session_tickets = false", "");
    let config = setup.client_config(BOTH);
    one_request(port_off, &config);
    assert_eq!(one_request(port_off, &config), HandshakeKind::Full);
}

#[test]
fn nodes_sharing_a_ticket_key_file_resume_each_others_sessions() {
    let setup = TlsSetup::new();
    let files = &setup.files;
    let shared = files.write("shared.keys", &format!("# current\n{}\n", "5a".repeat(32)));
    let other = files.write("other.keys", &format!("{}\n", "c3".repeat(32)));
    let start = |keys: &str| setup.start(&format!("ticket_key_file = \"{keys}\""), "");
    let (port_a, _a) = start(&shared);
    let (port_b, _b) = start(&shared);
    let (port_c, _c) = start(&other);

    // The client keys its session cache by server name, so a ticket from node A is offered to
    // B and C as well.
    let config = setup.client_config(&[&rustls::version::TLS13]);
    assert_eq!(one_request(port_a, &config), HandshakeKind::Full);
    assert_eq!(one_request(port_b, &config), HandshakeKind::Resumed);
    assert_eq!(one_request(port_c, &config), HandshakeKind::Full);
}

// ---------------------------------------------------------------------------
// Mutual TLS
// ---------------------------------------------------------------------------

#[test]
fn required_client_auth_admits_only_trusted_unrevoked_certificates() {
    let setup = TlsSetup::new();
    let (ca, upstream) = (&setup.ca, &setup.upstream);
    let client_ca = Ca::new("Client CA");
    let rogue_ca = Ca::new("Rogue CA");
    let client_ca_path = setup.files.write("client-ca.pem", &client_ca.pem());
    let crl_path = setup.files.write("client.crl", &client_ca.crl(&[666]));
    let tls = format!(
        "client_auth = \"required\"\nclient_ca = \"{client_ca_path}\"\nclient_crls = [\"{crl_path}\"]"
    );
    let route =
        "client_cert_headers = true\n\n[[apis.routes]]\npath = \"/plain\"\nupstream = \"app\"";
    let (port, _gw) = setup.start(&tls, route);

    // No certificate, an untrusted one, a revoked one: refused.
    assert_refused(port, &client_config(&ca.pem(), BOTH, None), "api.test");
    let rogue = rogue_ca.client("billing", 7);
    assert_refused(
        port,
        &client_config(&ca.pem(), BOTH, Some(&rogue)),
        "api.test",
    );
    let revoked = client_ca.client("billing", 666);
    assert_refused(
        port,
        &client_config(&ca.pem(), BOTH, Some(&revoked)),
        "api.test",
    );
    assert_eq!(
        upstream.requests(),
        0,
        "no refused client reached the upstream"
    );

    // A trusted certificate: its identity reaches the upstream; forged fields do not.
    let good = client_ca.client("billing", 42);
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let mut c = tls_client(
            port,
            &client_config(&ca.pem(), versions, Some(&good)),
            "api.test",
        );
        let resp = c.request(
            b"GET /orders HTTP/1.1\r\nHost: api.test\r\nX-Client-Cert-Fingerprint: forged\r\nX-Client-Cert-Subject-CN: admin\r\n\r\n",
        );
        assert_eq!(resp.status, 200);
        let seen = upstream.last_request();
        assert_eq!(
            seen.headers_all("x-client-cert-fingerprint"),
            [sha256_hex(&good.der)]
        );
        assert_eq!(seen.headers_all("x-client-cert-subject-cn"), ["billing"]);
        assert_eq!(
            seen.header("x-client-cert-san"),
            Some("URI:spiffe://corp/billing, DNS:billing.svc.test")
        );

        // A route that does not ask for the identity gets none, forged or real.
        let resp = c.request(
            b"GET /plain HTTP/1.1\r\nHost: api.test\r\nX-Client-Cert-Fingerprint: forged\r\n\r\n",
        );
        assert_eq!(resp.status, 200);
        let seen = upstream.last_request();
        assert_eq!(seen.target, "/plain");
        assert!(
            seen.headers
                .iter()
                .all(|(name, _)| !name.to_ascii_lowercase().starts_with("x-client-cert-")),
            "identity fields on a route without client_cert_headers: {:?}",
            seen.headers
        );
    }
}

#[test]
fn optional_client_auth_serves_anonymous_clients_without_identity() {
    let setup = TlsSetup::new();
    let (ca, upstream) = (&setup.ca, &setup.upstream);
    let client_ca = Ca::new("Client CA");
    let client_ca_path = setup.files.write("client-ca.pem", &client_ca.pem());
    let tls = format!("client_auth = \"optional\"\nclient_ca = \"{client_ca_path}\"");
    let (port, _gw) = setup.start(&tls, "client_cert_headers = true");

    let mut anonymous = tls_client(port, &client_config(&ca.pem(), BOTH, None), "api.test");
    let resp = anonymous
        .request(b"GET / HTTP/1.1\r\nHost: api.test\r\nX-Client-Cert-Subject-CN: admin\r\n\r\n");
    assert_eq!(resp.status, 200);
    let seen = upstream.last_request();
    assert_eq!(seen.header("x-client-cert-subject-cn"), None);
    assert_eq!(seen.header("x-client-cert-fingerprint"), None);

    let good = client_ca.client("reports", 9);
    let mut c = tls_client(
        port,
        &client_config(&ca.pem(), BOTH, Some(&good)),
        "api.test",
    );
    assert_eq!(c.get("/").status, 200);
    assert_eq!(
        upstream.last_request().header("x-client-cert-subject-cn"),
        Some("reports")
    );

    // Optional still refuses a certificate it cannot verify.
    let rogue = Ca::new("Rogue CA").client("reports", 9);
    assert_refused(
        port,
        &client_config(&ca.pem(), BOTH, Some(&rogue)),
        "api.test",
    );
}

// ---------------------------------------------------------------------------
// Reload
// ---------------------------------------------------------------------------

#[test]
fn reload_swaps_the_certificate_for_new_connections_only() {
    let ca = Ca::new("Test CA");
    let files = Files::new();
    let first = ca.server(&["api.test"]);
    let second = ca.server(&["api.test", "new.test"]);
    let pair = files.pair("s", &first);
    let upstream = TestUpstream::start(Mode::Echo);
    let port = free_port();
    let gw = Gateway::start(&tls_gateway_config(
        port,
        upstream.port,
        &format!("certificates = [{pair}]"),
        "",
    ));
    let config = client_config(&ca.pem(), BOTH, None);
    let mut established = tls_client(port, &config, "api.test");
    assert_eq!(peer_leaf(&established), first.der);
    assert_eq!(established.get("/").status, 200);

    // A broken certificate file is not applied: the old certificate stays.
    files.write(
        "s.pem",
        "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    );
    gw.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(peer_leaf(&tls_client(port, &config, "api.test")), first.der);

    files.pair("s", &second);
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let fresh = tls_client(port, &config, "api.test");
        if peer_leaf(&fresh) == second.der {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new connections still get the old certificate 5 s after SIGHUP; output:\n{}",
            gw.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The connection opened before the reload is untouched and keeps serving.
    assert_eq!(peer_leaf(&established), first.der);
    assert_eq!(established.get("/again").status, 200);
    assert_eq!(upstream.last_request().target, "/again");
}

// ---------------------------------------------------------------------------
// check
// ---------------------------------------------------------------------------

fn check_output(config: &str) -> CliOutput {
    let file = TempFile::new(config, "toml");
    run_cli(&["check", "-c", &file.path_str()], Duration::from_secs(20))
}

#[test]
fn check_rejects_expired_mismatched_and_missing_tls_files() {
    let ca = Ca::new("Test CA");
    let files = Files::new();
    let mut params = CertificateParams::new(vec!["old.test".to_string()]).expect("names");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = ca.issue(params);
    let good = ca.server(&["api.test"]);
    let other = ca.server(&["other.test"]);

    let expired_pair = files.pair("expired", &expired);
    let out = check_output(&tls_gateway_config(
        1,
        2,
        &format!("certificates = [{expired_pair}]"),
        "",
    ));
    assert_eq!(out.code(), Some(1), "{}", out.combined());
    assert!(out.combined().contains("expired"), "{}", out.combined());
    assert!(
        out.combined().contains(":13:"),
        "error names the certificates line: {}",
        out.combined()
    );

    let cert = files.write("good.pem", &good.cert_pem);
    let wrong_key = files.write("other.key", &other.key_pem);
    let out = check_output(&tls_gateway_config(
        1,
        2,
        &format!("certificates = [{{ cert = \"{cert}\", key = \"{wrong_key}\" }}]"),
        "",
    ));
    assert_eq!(out.code(), Some(1));
    assert!(
        out.combined().contains("does not belong"),
        "{}",
        out.combined()
    );

    let out = check_output(&tls_gateway_config(
        1,
        2,
        &format!("certificates = [{{ cert = \"{cert}\", key = \"/nonexistent/key.pem\" }}]"),
        "",
    ));
    assert_eq!(out.code(), Some(1));
    assert!(out.combined().contains("cannot read"), "{}", out.combined());

    let out = check_output(&tls_gateway_config(
        1,
        2,
        &format!(
            "certificates = [{}]\nclient_auth = \"required\"",
            files.pair("g", &good)
        ),
        "",
    ));
    assert_eq!(out.code(), Some(1));
    assert!(out.combined().contains("client_ca"), "{}", out.combined());

    let out = check_output(&tls_gateway_config(
        1,
        2,
        &format!("certificates = [{}]", files.pair("g", &good)),
        "",
    ));
    assert_eq!(out.code(), Some(0), "{}", out.combined());
}

// ---------------------------------------------------------------------------
// Bad input on TLS and plain ports
// ---------------------------------------------------------------------------

#[test]
fn garbage_plain_http_and_slow_handshakes_close_only_their_connection() {
    let setup = TlsSetup::new();
    let upstream = &setup.upstream;
    let (port, mut gw) = setup.start_with_log("handshake_timeout = \"500ms\"", "", "info");
    let config = setup.client_config(BOTH);
    let mut established = tls_client(port, &config, "api.test");
    assert_eq!(established.get("/").status, 200);

    // A TLS record header followed by garbage.
    let mut garbage = Client::connect(port);
    garbage.send(b"\x16\x03\x01\x00\x20this is not a client hello at all");
    let outcome = garbage.read_to_eof_or_timeout(Duration::from_secs(5));
    assert!(outcome.closed, "garbage handshake not closed");

    // Bytes that are not TLS at all.
    let mut junk = Client::connect(port);
    junk.send(&[0u8, 1, 2, 3, 255, 254, 0, 0]);
    assert!(junk.read_to_eof_or_timeout(Duration::from_secs(5)).closed);

    // Plain HTTP on the TLS port: a plain-text 400, then close.
    let mut plain = Client::connect(port);
    plain.send(b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n");
    let outcome = plain.read_to_eof_or_timeout(Duration::from_secs(5));
    assert!(outcome.closed);
    let text = String::from_utf8_lossy(&outcome.data);
    assert!(text.starts_with("HTTP/1.1 400 "), "got {text:?}");

    // Nothing sent, or half a ClientHello: closed by the handshake timeout.
    let mut silent = Client::connect(port);
    assert!(silent.read_to_eof_or_timeout(Duration::from_secs(5)).closed);
    let mut half = Client::connect(port);
    half.send(b"\x16\x03\x01\x02\x00\x01\x00\x01");
    assert!(half.read_to_eof_or_timeout(Duration::from_secs(5)).closed);

    assert_eq!(upstream.requests(), 1, "none of that reached the upstream");
    // The established connection was not disturbed.
    assert_eq!(established.get("/still").status, 200);
    let mut fresh = tls_client(port, &config, "api.test");
    assert_eq!(fresh.get("/fresh").status, 200);
    drop((established, fresh));

    // Every failure was counted: the cores report their totals when they stop.
    gw.signal("TERM");
    assert!(
        gw.wait_exit(Duration::from_secs(10)).is_some(),
        "gateway did not stop"
    );
    let output = gw.output();
    let total = |key: &str| -> u64 {
        output
            .lines()
            .filter(|line| line.contains("TLS totals"))
            .filter_map(|line| {
                let value = line.split(&format!("{key}=")).nth(1)?;
                value.split_whitespace().next()?.parse::<u64>().ok()
            })
            .sum()
    };
    // Garbage, junk, plain HTTP, silence, half a hello; the readiness probe of the harness
    // is one more failed handshake per listener check.
    assert!(
        total("failed") >= 5,
        "failed handshakes not counted:\n{output}"
    );
    assert!(
        total("handshakes") >= 2,
        "handshakes not counted:\n{output}"
    );
}

#[test]
fn tls_on_a_plain_port_fails_fast() {
    let upstream = TestUpstream::start(Mode::Echo);
    let port = free_port();
    let _gw = ConfigBuilder::new(port, &[upstream.port]).start();
    let ca = Ca::new("Test CA");
    let started = Instant::now();
    let result = Client::try_connect_tls(port, client_config(&ca.pem(), BOTH, None), "api.test");
    let err = result
        .err()
        .expect("a TLS handshake with a plain listener must fail");
    assert!(
        !matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "handshake hung until the client timeout: {err}"
    );
    assert!(started.elapsed() < IO_TIMEOUT);
    assert_eq!(upstream.requests(), 0);
}

// ---------------------------------------------------------------------------
// Upstream TLS
// ---------------------------------------------------------------------------

/// A keep-alive HTTPS origin: answers every request with 200 and a body naming the SNI it was
/// reached by and the CN of the client certificate it was shown (if any).
struct TlsOrigin {
    port: u16,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl TlsOrigin {
    fn start(server: &Issued, client_ca: Option<&Ca>) -> TlsOrigin {
        let verifier = match client_ca {
            None => rustls::server::WebPkiClientVerifier::no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots
                    .add(CertificateDer::from(ca.cert.der().to_vec()))
                    .expect("root");
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .allow_unauthenticated()
                .build()
                .expect("verifier")
            }
        };
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(BOTH)
                .expect("versions")
                .with_client_cert_verifier(verifier)
                .with_single_cert(server.chain(), server.key())
                .expect("origin cert"),
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind origin");
        let port = listener.local_addr().expect("addr").port();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (conns, reqs) = (connections.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                conns.fetch_add(1, Ordering::SeqCst);
                let config = config.clone();
                let reqs = reqs.clone();
                std::thread::spawn(move || serve_origin_connection(stream, config, reqs));
            }
        });
        TlsOrigin {
            port,
            connections,
            requests,
        }
    }
}

fn serve_origin_connection(
    stream: std::net::TcpStream,
    config: Arc<rustls::ServerConfig>,
    requests: Arc<Mutex<Vec<String>>>,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(session) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(session, stream);
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match tls.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        requests
            .lock()
            .unwrap()
            .push(head.lines().next().unwrap_or("").to_string());
        let sni = tls.conn.server_name().unwrap_or("-").to_string();
        let cn = tls
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|der| {
                let text = String::from_utf8_lossy(der.as_ref()).into_owned();
                if text.contains("gateway-client") {
                    "gateway-client"
                } else {
                    "other"
                }
                .to_string()
            })
            .unwrap_or_else(|| "-".to_string());
        let body = format!("origin sni={sni} client={cn}");
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if tls.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

fn upstream_tls_config(port: u16, origin: u16, upstream_tls: &str) -> String {
    format!(
        "[gateway]\nworkers = 1\npin = false\n\n[logging]\nlevel = \"error\"\n\n\
         [[listeners]]\nname = \"public\"\naddress = \"127.0.0.1:{port}\"\n\n\
         [[upstreams]]\nname = \"secure\"\ntargets = [\"127.0.0.1:{origin}\"]\nconnect_timeout = \"2s\"\n\
         tls = {{ {upstream_tls} }}\n\n\
         [[apis]]\nname = \"demo\"\n\n\
         [[apis.routes]]\npath = \"/\"\nupstream = \"secure\"\n"
    )
}

#[test]
fn upstream_over_tls_with_sni_client_certificate_and_pooling() {
    let origin_ca = Ca::new("Origin CA");
    let gateway_client_ca = Ca::new("Gateway client CA");
    let files = Files::new();
    let origin = TlsOrigin::start(
        &origin_ca.server(&["origin.test"]),
        Some(&gateway_client_ca),
    );
    let ca_path = files.write("origin-ca.pem", &origin_ca.pem());
    let client = gateway_client_ca.client("gateway-client", 3);
    let cert = files.write("gw.pem", &client.cert_pem);
    let key = files.write("gw.key", &client.key_pem);

    let port = free_port();
    let _gw = Gateway::start(&upstream_tls_config(
        port,
        origin.port,
        &format!(
            "ca = \"{ca_path}\", server_name = \"origin.test\", cert = \"{cert}\", key = \"{key}\""
        ),
    ));
    let mut c = Client::connect(port);
    for path in ["/a", "/b", "/c"] {
        let resp = c.get(path);
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.body_str(),
            "origin sni=origin.test client=gateway-client"
        );
    }
    assert_eq!(
        origin.requests.lock().unwrap().as_slice(),
        ["GET /a HTTP/1.1", "GET /b HTTP/1.1", "GET /c HTTP/1.1"]
    );
    assert_eq!(
        origin.connections.load(Ordering::SeqCst),
        1,
        "TLS upstream connection pooled"
    );

    // A CA that did not issue the origin's certificate: 502, never the origin's answer.
    let wrong_ca = files.write("wrong-ca.pem", &Ca::new("Other CA").pem());
    let port2 = free_port();
    let _gw2 = Gateway::start(&upstream_tls_config(
        port2,
        origin.port,
        &format!("ca = \"{wrong_ca}\", server_name = \"origin.test\""),
    ));
    assert_problem(&get(port2, "/"), 502);

    // A name the origin's certificate does not carry: 502 as well.
    let port3 = free_port();
    let _gw3 = Gateway::start(&upstream_tls_config(
        port3,
        origin.port,
        &format!("ca = \"{ca_path}\", server_name = \"elsewhere.test\""),
    ));
    assert_problem(&get(port3, "/"), 502);
}

/// Relative certificate paths are resolved against the config file's directory.
#[test]
fn pem_files_are_read_relative_to_the_config_file() {
    let ca = Ca::new("Test CA");
    let files = Files::new();
    let issued = ca.server(&["api.test"]);
    files.write("rel.pem", &issued.cert_pem);
    files.write("rel.key", &issued.key_pem);
    let config_path: PathBuf = files.dir.join("gateway.toml");
    std::fs::write(
        &config_path,
        tls_gateway_config(
            1,
            2,
            "certificates = [{ cert = \"rel.pem\", key = \"rel.key\" }]",
            "",
        ),
    )
    .expect("write config");
    let out = run_cli(
        &["check", "-c", &config_path.display().to_string()],
        Duration::from_secs(20),
    );
    assert_eq!(out.code(), Some(0), "{}", out.combined());
}
