//! WADO-RS for consumer DRIMboxes (DRIM-M §4.3): the pure decisions first — the Accept header
//! and the transfer syntax ([`accept`]), what a KOS-SOPInstanceUID gets ([`decide`]), whether
//! a client certificate's subject is on the whitelist ([`dn`]), the multipart body
//! ([`multipart`]), the Bearer token and its introspection cache ([`token`]); and [`server`],
//! the HTTPS service that puts them together.

pub mod accept;
pub mod decide;
pub mod dn;
pub mod multipart;
pub mod server;
pub mod token;
pub mod transcode;
