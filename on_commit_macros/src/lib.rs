//! Procedural macros of diesel-on-commit. Use them through the facade crate
//! `diesel-on-commit`.
#![forbid(unsafe_code)]
