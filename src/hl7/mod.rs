//! Report intake over HL7 v2 (the ANS CDA-over-HL7 profile). Pure parts first: the message
//! parser (`message`), what a report message asks for or why it is refused (`report`), and the
//! acknowledgements (`ack`). The MLLP listener (its own process) builds on them.

pub mod ack;
pub mod listener;
pub mod message;
pub mod report;
