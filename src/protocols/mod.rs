//! The building-automation protocol servers; each reads and writes only the point database.

pub mod bacnet;
pub mod haystack;
pub mod modbus;
pub mod mqtt;
