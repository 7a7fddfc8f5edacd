//! DRIMbox appliance firmware. See ARCHITECTURE.md for the map.

pub mod archive;
pub mod base64;
pub mod cda;
pub mod config;
pub mod control;
pub mod dicom;
pub mod dmp;
pub mod exam;
pub mod hl7;
pub mod ipc;
pub mod kos;
pub mod logging;
pub mod lot;
pub mod ota;
pub mod pki;
pub mod publisher;
pub mod signing;
pub mod status;
pub mod supervisor;
pub mod tls;
pub mod wado;
pub mod whitelist;
pub mod xdm;
pub mod xds;
pub mod xml;
pub mod zip;
