//! DICOM: the receiver (C-ECHO/C-STORE SCP) and the pieces it is made of.

pub mod dimse;
pub mod inspect;
pub mod part10;
pub mod pdu_reader;
pub mod scp;
pub mod sop_classes;
pub mod storage_classes;
