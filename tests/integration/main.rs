//! End-to-end tests: the real `tokenrelay` binary against a fake Entra authority, driven
//! over HTTP on loopback. One test binary (linked once) with a module per area.

mod support;

mod app_service;
mod cache;
mod certificates;
mod cli;
mod connections;
mod credentials;
mod dev;
mod faults;
mod imds;
mod limits;
mod login;
mod persistence_faults;
mod store;
mod telemetry;
mod upstream;
