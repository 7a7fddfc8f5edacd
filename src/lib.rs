//! DRIMbox appliance firmware. See ARCHITECTURE.md for the map.

pub mod archive;
pub mod config;
pub mod dicom;
pub mod ipc;
pub mod logging;
pub mod supervisor;
