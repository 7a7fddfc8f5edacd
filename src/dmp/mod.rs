//! Talking to the DMP (DRIM-M §2): MTOM packaging, the SOAP requests and the answers. Pure
//! builders and readers here; the network is the publisher's (and the simulator's).

pub mod http;
pub mod mtom;
pub mod response;
pub mod sim;
pub mod simulator;
pub mod soap;
