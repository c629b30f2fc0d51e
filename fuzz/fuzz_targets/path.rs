//! Path normalization: never panics; a normalized path starts with `/`, holds no dot segment,
//! and is its own normal form (normalizing it again changes nothing).
#![no_main]

use credentialflow::http::normalize::{normalize, EscapedSlashes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let path = format!("/{text}");
    let slashes = match flags % 3 {
        0 => EscapedSlashes::Reject,
        1 => EscapedSlashes::Decode,
        _ => EscapedSlashes::Keep,
    };
    let merge = flags & 4 != 0;
    let (mut out, mut scratch) = (Vec::new(), Vec::new());
    let normal = match normalize(&path, slashes, merge, &mut out, &mut scratch) {
        Ok(false) => path.clone(),
        Ok(true) => String::from_utf8(out.clone()).expect("normal form is UTF-8"),
        Err(_) => return,
    };
    assert!(normal.starts_with('/'), "{normal}");
    assert!(
        !normal.split('/').any(|s| s == "." || s == ".."),
        "{path} → {normal}"
    );
    let (mut again, mut scratch2) = (Vec::new(), Vec::new());
    match normalize(&normal, slashes, merge, &mut again, &mut scratch2) {
        Ok(false) => {}
        Ok(true) => assert_eq!(String::from_utf8(again).unwrap(), normal, "{path}"),
        Err(err) => panic!("{path} → {normal} → {err}"),
    }
});
