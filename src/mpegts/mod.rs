//! The MPEG-TS plumbing the router and the media adapters share: packet helpers (`ts`) and joining a stream mid-way (`join`); a layer under both `engine` and `media`, importing neither.

pub mod join;
pub mod ts;
