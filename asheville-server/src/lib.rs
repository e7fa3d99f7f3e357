//! Asheville's shells: the reference HTTP server ([`http`]) and the
//! `asheville` command-line tool (`src/bin/asheville/`), which also runs
//! the server as `asheville serve`.

pub mod http;
