//! The point database and model: every measurement, command and status as a point, with quality, priority arrays, history and change feeds.

pub mod alarm;
mod db;
mod maps;
mod model;
mod policy;
pub mod route_addresses;
pub mod routes;

pub use db::{
    Change, DbOptions, Persister, PointDb, PointState, PriorityArray, Protocol, Sample, SlotValue,
    Source, WriteError, WriteOutcome, WriteRecord, DEFAULT_LEVEL, OVERRIDE_LEVEL, PRIORITY_LEVELS,
};
pub use maps::{
    BacnetMap, BacnetObject, BacnetObjectType, BacnetTrendLog, HttpEndpoint, HttpMap, HttpMethod,
    Maps, ModbusField, ModbusMap, ModbusRegister, ModbusRouteBlocks, ModbusTable, RegType,
    WordOrder, DEFAULT_ROUTE_TREND_BUFFER, DEFAULT_TREND_BUFFER, MAX_TREND_BUFFER,
};
pub use model::{
    Kind, PointDef, PointId, Quality, Role, SiteEquip, TagValue, Value, ValueError, NA_STATE,
};
pub use policy::{loopback, Cidr, Denial, WritePolicy};

#[cfg(test)]
mod tests;
