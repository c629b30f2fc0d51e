//! The request-head parser with its strict checks: never panics, and an accepted head stays
//! within the input and is consistent with its framing.
#![no_main]

use credentialflow::http::request::{parse, HeadLimits};
use credentialflow::http::{header_slots, BodyFraming};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = header_slots::<100>();
    let limits = HeadLimits {
        max_head_bytes: 16 * 1024,
        max_uri_bytes: 8 * 1024,
    };
    if let Ok(Some(req)) = parse(data, &mut headers, limits) {
        assert!(req.head_len <= data.len());
        assert_eq!(req.head.len(), req.head_len);
        assert!(req.target.starts_with('/'));
        if req.minor_version == 0 {
            assert!(req.framing != BodyFraming::Chunked);
        }
        let _ = req.path();
        let _ = req.client_keep_alive();
    }
});
