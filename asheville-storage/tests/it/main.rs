//! Integration tests of asheville-storage (one binary, several modules).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on failure

mod conformance;
mod maintenance;
mod metering;
mod repo;
mod s3server;
