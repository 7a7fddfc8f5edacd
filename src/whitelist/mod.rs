//! The national whitelist of DRIMboxes ("liste blanche", DRIM-M §5): reading it leniently
//! ([`list`]) and verifying its enveloped XAdES signature, certification path and revocation
//! ([`verify`]), the proof of verification ([`proof`]) and the schedule ([`schedule`]), all
//! pure; the effects are in [`trust`] (anchors, CRL files and fetches) and [`updater`] (the
//! service: download, install, history), and `drimbox whitelist verify` brings its own.

pub mod list;
pub mod proof;
pub mod schedule;
pub mod trust;
pub mod updater;
pub mod verify;
