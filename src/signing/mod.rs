//! Signing for the DMP: the practice's signing identity (PKCS#12) and the IHE DSG lot signature
//! document (DRIM-M §2.6) built with it.
//!
//! Invariant: the lot signature bytes this module returns are the bytes the publisher hashes
//! for the DocumentEntry (`hash`/`size`), archives and sends: nothing re-serialises them.

pub mod identity;
pub mod lot;

pub use identity::{IdentityError, SigningIdentity};
pub use lot::{
    build_lot_signature, prepare_lot_signature, KosContent, LotSignatureError, LotSignatureInput,
    UnsignedLotSignature,
};

use crate::xml::dsig::{DigestMethod, SignatureMethod};

/// The signature algorithm of the lot signature; its digest follows (rsa-sha1 → sha1,
/// rsa-sha256 → sha256). Configurable because the DMP accepted SHA-1 in 2023 and whether it
/// now requires SHA-256 is not public (DRIM-M §2.6, §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignatureAlgorithm {
    RsaSha1,
    RsaSha256,
}

impl SignatureAlgorithm {
    /// The configuration spelling: `rsa-sha1` or `rsa-sha256`.
    pub fn from_name(name: &str) -> Option<SignatureAlgorithm> {
        match name {
            "rsa-sha1" => Some(SignatureAlgorithm::RsaSha1),
            "rsa-sha256" => Some(SignatureAlgorithm::RsaSha256),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SignatureAlgorithm::RsaSha1 => "rsa-sha1",
            SignatureAlgorithm::RsaSha256 => "rsa-sha256",
        }
    }

    pub fn signature_method(self) -> SignatureMethod {
        match self {
            SignatureAlgorithm::RsaSha1 => SignatureMethod::RsaSha1,
            SignatureAlgorithm::RsaSha256 => SignatureMethod::RsaSha256,
        }
    }

    pub fn digest_method(self) -> DigestMethod {
        self.signature_method().digest_method()
    }
}
