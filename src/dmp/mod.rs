//! Talking to the DMP (DRIM-M §2): MTOM packaging, the VIHF, the SOAP requests and the
//! answers, HTTP over TLS; and the simulator that stands in for the DMP in tests and the demo.
//! Pure builders and readers, but for `http` (the network) and `simulator` (a server).

pub mod deliver;
pub mod http;
pub mod mtom;
pub mod response;
pub mod sim;
pub mod simulator;
pub mod soap;
pub mod vihf;
