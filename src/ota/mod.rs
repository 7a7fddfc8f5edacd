//! Signed A/B updates of the appliance (issue 8), the parts built so far: the dm-verity hash
//! tree an update's payload is checked against, and the A/B boot state that decides, from the
//! ESP's boot entries, what an install and a commit write and in which order.
//!
//! Not built yet: the bundle (RAUC verity layout, CMS signature), `drimbox ota bundle|install`,
//! and the image these run in. See README ("Not built or tested here").

pub mod boot;
pub mod verity;
