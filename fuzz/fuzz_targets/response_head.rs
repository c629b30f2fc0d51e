//! The upstream response-head parser: never panics, and an accepted head stays within the
//! input.
#![no_main]

use credentialflow::http::header_slots;
use credentialflow::http::response::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let mut headers = header_slots::<100>();
    if let Ok(Some(resp)) = parse(data, &mut headers, 16 * 1024, flags & 1 == 1) {
        assert!(resp.head_len <= data.len());
        assert!((100..=999).contains(&resp.code));
    }
});
