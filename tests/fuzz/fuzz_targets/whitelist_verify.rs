//! Any bytes as a whitelist: the verifier must answer with a verdict, never panic.
#![no_main]

use drimbox::config::WhitelistConfig;
use drimbox::whitelist::{trust, verify};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn trust() -> &'static verify::Trust {
    static T: OnceLock<verify::Trust> = OnceLock::new();
    T.get_or_init(|| trust::load(&WhitelistConfig::default()).expect("built-in anchors"))
}

fuzz_target!(|data: &[u8]| {
    let v = verify::verify(
        data,
        trust(),
        &verify::Revocation::default(),
        1_796_169_600,
        Some(1_790_000_000),
    );
    assert!(!v.valid || v.failures().next().is_none());
});
