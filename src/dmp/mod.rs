//! The DMP client side (DRIM-M §2): for now the VIHF assertion of every request.

pub mod vihf;
