//! Holder crate for the runnable examples in this folder.
