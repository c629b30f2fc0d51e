//! PROXY protocol headers and request signatures — the bytes an L4 load balancer (or anyone who
//! reaches a `proxy_protocol` listener) sends first, and the request targets the signature filter
//! scans. Never panics; an accepted header lies within the input and parses the same from
//! exactly its own bytes; a signature scan is the same whether the scratch buffer is fresh or
//! reused.
#![no_main]

use credentialflow::filter::proxy_protocol::{parse, Parsed};
use credentialflow::filter::signatures::{Signature, SignatureSet};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn signatures() -> &'static SignatureSet {
    static SET: OnceLock<SignatureSet> = OnceLock::new();
    SET.get_or_init(|| SignatureSet::new(&Signature::ALL))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Parsed::Header { len, source }) = parse(data) {
        assert!(len <= data.len(), "header of {len} bytes in {} bytes", data.len());
        assert_eq!(
            parse(&data[..len]),
            Ok(Parsed::Header { len, source }),
            "the header alone parses the same"
        );
    }
    let mut fresh = Vec::new();
    let first = signatures().scan(data, &mut fresh);
    let mut reused = vec![0xAA; 64];
    assert_eq!(first, signatures().scan(data, &mut reused));
});
