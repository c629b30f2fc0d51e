//! The config loader: any text is either a config or a list of errors with line numbers,
//! never a panic.
#![no_main]

use credentialflow::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = Config::parse("fuzz.toml", text) {
        assert!(!errors.is_empty());
        for error in errors {
            let _ = error.to_string();
        }
    }
});
