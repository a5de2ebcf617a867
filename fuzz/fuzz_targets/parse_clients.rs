//! Arbitrary bytes under every accepted extension must never panic the
//! import. `parse_clients` turns a panic into `Unreadable(PANIC_DETAIL)`;
//! here a panic hook records where it happened: inside a dependency
//! (calamine has known panics on corrupt CFB/xls headers) it is tolerated,
//! anywhere else (our code, or std called by our code) it is a crash.
#![no_main]

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::Once;

use libfuzzer_sys::fuzz_target;
use marcador::import::{
    decode_base64, normalize_phone, parse_clients, ImportOptions, PANIC_DETAIL,
};

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn record_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let place = info.location().map_or_else(
                || "unknown".to_owned(),
                |l| format!("{}:{}", l.file(), l.line()),
            );
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{place}: {info}")));
        }));
    });
}

fn in_dependency(place: &str) -> bool {
    place.contains("/.cargo/registry/") || place.contains("/.cargo/git/")
}

fuzz_target!(|data: &[u8]| {
    record_panics();
    let options = ImportOptions {
        region: "CO".into(),
        prefix: "+57".into(),
        max_rows: 10_000,
        max_upload_mb: 1,
        max_cells: 100_000,
    };
    let existing: HashSet<String> = ["+573138539155".to_owned()].into();
    for name in ["f.csv", "f.txt", "f.xlsx", "f.xlsm", "f.xls", "f.ods"] {
        if let Err(err) = parse_clients(data, name, &options, &existing) {
            let _ = (err.message(), err.status());
            if err.detail().as_deref() == Some(PANIC_DETAIL) {
                let place = LAST_PANIC
                    .with(|p| p.borrow_mut().take())
                    .unwrap_or_default();
                if !in_dependency(&place) {
                    eprintln!("{name}: {place}");
                    std::process::abort();
                }
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = decode_base64(text);
        let _ = normalize_phone(text, "CO", "+57");
    }
});
