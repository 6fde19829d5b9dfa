//! The only module that imports fuser: the request adapter and the mount session.

pub mod adapter;
mod convert;
pub mod passthrough;
pub mod session;
mod spin;
