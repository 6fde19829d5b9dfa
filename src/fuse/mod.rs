//! The only module that imports fuser: the request adapter and the mount session.

pub mod adapter;
pub mod passthrough;
pub mod session;
