//! The national whitelist of DRIMboxes ("liste blanche", DRIM-M §5): reading it leniently
//! ([`list`]) and verifying its enveloped XAdES signature, certification path and revocation
//! ([`verify`]). Both pure: the updater service and `drimbox whitelist verify` bring the
//! bytes, the trust configuration, the CRLs and the clock.

pub mod list;
pub mod trust;
pub mod verify;
