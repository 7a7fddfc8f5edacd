//! DRIMbox appliance firmware. See ARCHITECTURE.md for the map.

pub mod archive;
pub mod base64;
pub mod cda;
pub mod config;
pub mod control;
pub mod dicom;
pub mod hl7;
pub mod ipc;
pub mod logging;
pub mod pki;
pub mod signing;
pub mod status;
pub mod supervisor;
pub mod tls;
pub mod xml;
