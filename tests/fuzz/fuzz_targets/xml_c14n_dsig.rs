//! Any bytes through the safe parser, the four canonicalisations, and XMLDSig verification:
//! errors are fine, panics, hangs and unbounded memory are not.
#![no_main]

use drimbox::xml::c14n::{C14nMethod, Canonicalizer};
use drimbox::xml::dsig::{self, VerifyOptions};
use drimbox::xml::Document;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = Document::parse(data) else {
        return;
    };
    for method in [
        C14nMethod::Inclusive,
        C14nMethod::InclusiveWithComments,
        C14nMethod::Exclusive,
        C14nMethod::ExclusiveWithComments,
    ] {
        let once = Canonicalizer::new(method).document(&doc);
        // Canonical XML is a fixed point: canonicalising it again changes nothing.
        if let Ok(again) = Document::parse(&once) {
            assert_eq!(once, Canonicalizer::new(method).document(&again));
        }
    }
    let _ = dsig::verify(data, &VerifyOptions::default());
});
