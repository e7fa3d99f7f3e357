//! Asheville HTTP shell and `asheville` CLI.
//!
//! Not built yet: a placeholder in the workspace layout of DESIGN.md that
//! exports nothing. See the open issues for its scope.
