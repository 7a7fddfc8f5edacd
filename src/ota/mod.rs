//! Signed A/B updates of the appliance (issue 8).
//!
//! Pure parts: the dm-verity hash tree an update's payload is checked against ([`verity`]),
//! the bundle's CMS signature ([`cms`]), the bundle layout and its manifest ([`bundle`]), and
//! the A/B boot state that decides, from the ESP's boot entries, what an install and a commit
//! write and in which order ([`boot`]). The effects: [`install`] performs those writes on the
//! slots, the ESP and the floor, one durable write at a time; `drimbox ota` is its command line.
//!
//! Not built yet: the test image these run in, the health verdict that gates the commit at
//! boot, and the status page's install form. See README ("Not built or tested here").

/// The compatible string of this box's bundles (RAUC's `[update] compatible`).
pub const COMPATIBLE: &str = "drimbox-x86_64";

pub mod boot;
pub mod bundle;
pub mod cms;
pub mod install;
pub mod verity;
