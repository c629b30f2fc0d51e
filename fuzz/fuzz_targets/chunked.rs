//! The chunked-body scanner: never panics, reports data ranges inside the input, and gives the
//! same result whether the input arrives whole or split at any point.
#![no_main]

use credentialflow::http::chunked::ChunkedScanner;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&split, data)) = input.split_first() else {
        return;
    };
    let mut whole = ChunkedScanner::new();
    let mut whole_data = Vec::new();
    let whole_result = whole.scan(data, |a, b| {
        assert!(a <= b && b <= data.len());
        whole_data.extend_from_slice(&data[a..b]);
    });

    let at = (split as usize).min(data.len());
    let mut parts = ChunkedScanner::new();
    let mut parts_data = Vec::new();
    let (first, second) = data.split_at(at);
    let first_result = parts.scan(first, |a, b| parts_data.extend_from_slice(&first[a..b]));
    match (&whole_result, first_result) {
        (Ok(consumed), Ok(n)) if parts.is_done() => {
            assert_eq!(*consumed, n);
            assert_eq!(whole_data, parts_data);
        }
        (_, Ok(n)) => {
            assert_eq!(n, first.len());
            let second_result =
                parts.scan(second, |a, b| parts_data.extend_from_slice(&second[a..b]));
            match (&whole_result, second_result) {
                (Ok(consumed), Ok(m)) => {
                    assert_eq!(*consumed, n + m);
                    assert_eq!(whole.is_done(), parts.is_done());
                    assert_eq!(whole_data, parts_data);
                }
                (Err(_), Err(_)) => {}
                (w, p) => panic!("whole {w:?} vs split {p:?}"),
            }
        }
        (Err(_), Err(_)) => {}
        (w, p) => panic!("whole {w:?} vs first part {p:?}"),
    }
});
