//! End-to-end tests: the real `tokenrelay` binary against a fake Entra authority, driven
//! over HTTP on loopback. One test binary (linked once) with a module per area.

mod support;

mod app_service;
mod cache;
mod callers;
mod certificates;
mod cli;
mod compose;
mod connections;
mod credentials;
mod dev;
mod developer_tools;
mod faults;
mod fleet;
mod floods;
mod imds;
mod kubernetes;
mod limits;
mod login;
mod on_behalf_of;
mod persistence_faults;
mod rotation;
mod shared_cache_dir;
mod store;
mod telemetry;
mod upstream;
