//! Asheville's shells. Today: the `asheville` command-line tool
//! (`src/bin/asheville.rs`). The HTTP server of DESIGN.md is not built yet.
