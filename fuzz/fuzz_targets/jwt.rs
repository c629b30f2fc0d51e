//! Bearer tokens and JWK Sets: splitting, header and claim parsing (simd-json) and key-set
//! reading never panic on any input.
#![no_main]

use credentialflow::auth::jwks::KeySet;
use credentialflow::auth::jwt::{decode_signature, read_header, split, with_claims, Scratch};
use credentialflow::auth::keys::AlgorithmSet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut scratch = Scratch::default();
    if let Some(parts) = split(data) {
        let mut signature = [0u8; 1024];
        let _ = decode_signature(parts.signature, &mut signature);
        if let Ok(header) = read_header(&mut scratch, parts.header) {
            let _ = header.kid();
        }
        let _ = with_claims(&mut scratch, parts.payload, |claims| {
            for (name, value) in claims {
                let mut text = String::new();
                let _ = (name.len(), value.as_seconds(), value.scalar_text(&mut text));
                let _ = value.strings().count();
            }
            Ok(())
        });
    }
    let _ = KeySet::parse(data, AlgorithmSet::ANY, true);
});
