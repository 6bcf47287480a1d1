//! The MPEG-TS plumbing the router and the media adapters share: packet helpers (`ts`), joining a stream mid-way (`join`), an input's hand-over of chunks to its route (`feed`) and the per-input/output counters (`stats`); a layer under both `engine` and `media`, importing neither.

pub mod feed;
pub mod join;
pub mod stats;
pub mod ts;
