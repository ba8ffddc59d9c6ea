//! The load scenarios; each owns its options, runs K times and reports medians.

pub mod chat;
pub mod idle;
pub mod login;
pub mod muc;
pub mod presence;
pub mod storm;
