//! Syncs into a real repository.
