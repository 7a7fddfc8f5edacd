//! Signed A/B updates of the appliance (issue 8).
//!
//! Pure parts: the dm-verity hash tree an update's payload is checked against ([`verity`]),
//! the bundle's CMS signature ([`cms`]), the bundle layout and its manifest ([`bundle`]), and
//! the A/B boot state that decides, from the ESP's boot entries, what an install and a commit
//! write and in which order ([`boot`]). The effects: [`install`] performs those writes on the
//! slots, the ESP and the floor, one durable write at a time; `drimbox ota` is its command line.
//!
//! [`report`] is the update state as the status page shows it (only root may read the ESP).
//! At boot, `boot-complete.target` requires the health verdict (`crate::health`), and the
//! commit runs only after it (systemd/drimbox-ota-commit.service).
//! [`spool`] is the hand-off from the status page's install form (unprivileged) to the root
//! installer (`drimbox ota install-spooled`, started by systemd/drimbox-ota-spool.path).

/// The compatible string of this box's bundles (RAUC's `[update] compatible`).
pub const COMPATIBLE: &str = "drimbox-x86_64";

pub mod boot;
pub mod bundle;
pub mod cms;
pub mod install;
pub mod report;
pub mod spool;
pub mod verity;
